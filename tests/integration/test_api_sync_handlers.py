"""Sync handlers on a real, migrated database, called directly (no NATS): the apply rules.

Last-writer-wins in any order, stale events counted, tombstones, user-before-org
retried, natural-key collisions recorded and rejected, transient collisions retried,
invalid payloads rejected.  End-to-end delivery is covered in tests/e2e.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from bridge.envelope import Envelope, format_timestamp
from bridge.errors import Reject, Retry
from bridge.ids import compose
from services.shared.db import migrate
from services.shared.handlers import SyncHandlers
from services.shared.models import Organization, StaleEvent, SyncConflict, User

T0 = datetime(2026, 3, 1, 9, 0, 0, 500000, tzinfo=UTC)
US = timedelta(microseconds=1)
#: Fresh ids as System A's generator issues them: one per tick, never repeated.
_IDS = itertools.count(compose(datetime.now(UTC), 0, 1), 64)


def new_id() -> int:
    return next(_IDS)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    await migrate(database_url)
    engine = create_async_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def handlers(engine: AsyncEngine) -> SyncHandlers:
    return SyncHandlers(engine, "system_b")


def org_payload(
    org_id: int, *, at: datetime, origin: str = "system_a", **over: Any
) -> dict[str, Any]:
    row = {
        "id": org_id,
        "name": "Acme",
        "domain": "acme.test",
        "active": True,
        "created_at": format_timestamp(T0),
        "updated_at": format_timestamp(at),
        "origin": origin,
        "deleted_at": None,
    }
    row.update(over)
    return row


def user_payload(user_id: int, org_id: int, *, at: datetime, **over: Any) -> dict[str, Any]:
    row = {
        "id": user_id,
        "organization_id": org_id,
        "name": "Ann",
        "email": "ann@example.com",
        "role": "member",
        "active": True,
        "created_at": format_timestamp(T0),
        "updated_at": format_timestamp(at),
        "origin": "system_a",
        "deleted_at": None,
    }
    row.update(over)
    return row


def envelope(
    resource: str, action: str, payload: dict[str, Any], producer: str = "system_a"
) -> Envelope:
    return Envelope(
        event_type=f"{resource}.{action}",
        producer=producer,
        resource_type=resource,
        resource_id=str(payload["id"]),
        payload=payload,
    )


async def apply(engine: AsyncEngine, handlers: SyncHandlers, env: Envelope) -> None:
    """Run the handler in one transaction, like the inbox does (rolled back if it raises)."""
    factory = async_sessionmaker(engine, expire_on_commit=False)
    async with factory() as session, session.begin():
        # a peer's change is applied with capture off, as the inbox's skip_publish does
        await session.execute(text("SET LOCAL bridge.capture = 'off'"))
        handler = handlers.organization if env.resource_type == "organization" else handlers.user
        await handler(session, env)


async def fetch(engine: AsyncEngine, model: type[Any], row_id: int) -> Any:
    async with AsyncSession(engine) as session:
        return await session.get(model, row_id)


async def count(engine: AsyncEngine, model: type[Any]) -> int:
    async with AsyncSession(engine) as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def test_versions_converge_in_every_arrival_order(
    engine: AsyncEngine, handlers: SyncHandlers
) -> None:
    org_id = new_id()
    events = [
        envelope("organization", "created", org_payload(org_id, at=T0)),
        envelope("organization", "updated", org_payload(org_id, at=T0 + US, name="One")),
        envelope(
            "organization",
            "updated",
            org_payload(org_id, at=T0 + 2 * US, name="Tie", origin="system_a"),
        ),
        envelope(
            "organization",
            "updated",
            org_payload(org_id, at=T0 + 2 * US, name="TieB", origin="system_b"),
            producer="system_b",
        ),
        envelope(
            "organization",
            "deleted",
            org_payload(org_id, at=T0 + 3 * US, deleted_at=format_timestamp(T0 + 3 * US)),
        ),
    ]
    for order in itertools.islice(itertools.permutations(events), 0, None, 17):
        async with engine.begin() as conn:  # a reset between orders, not a change to publish
            await conn.execute(text("SET LOCAL bridge.capture = 'off'"))
            await conn.execute(Organization.__table__.delete())
        for env in order:
            await apply(engine, handlers, env)
        row = await fetch(engine, Organization, org_id)
        # The tombstone is the greatest version: whatever the order, it wins.
        assert row.deleted_at == T0 + 3 * US and row.updated_at == T0 + 3 * US
        assert row.name == "Acme" and row.origin == "system_a"


async def test_stored_version_is_the_senders_verbatim_and_stale_is_counted(
    engine: AsyncEngine, handlers: SyncHandlers
) -> None:
    org_id = new_id()
    newer = envelope("organization", "updated", org_payload(org_id, at=T0 + 5 * US, name="New"))
    older = envelope("organization", "updated", org_payload(org_id, at=T0 + US, name="Old"))
    await apply(engine, handlers, newer)
    await apply(engine, handlers, older)
    await apply(engine, handlers, newer)  # the same version again: nothing, not stale
    row = await fetch(engine, Organization, org_id)
    assert (row.name, row.updated_at, row.origin, row.created_at) == (
        "New",
        T0 + 5 * US,
        "system_a",
        T0,
    )
    assert await count(engine, StaleEvent) == 1
    async with AsyncSession(engine) as session:
        stale = (await session.scalars(select(StaleEvent))).one()
    assert str(stale.event_id) == older.event_id
    assert stale.local_updated_at == T0 + 5 * US and stale.incoming_updated_at == T0 + US


async def test_tie_on_timestamp_is_broken_by_origin(
    engine: AsyncEngine, handlers: SyncHandlers
) -> None:
    org_id = new_id()
    from_b = envelope(
        "organization",
        "updated",
        org_payload(org_id, at=T0, name="B", origin="system_b"),
        producer="system_b",
    )
    from_a = envelope(
        "organization", "updated", org_payload(org_id, at=T0, name="A", origin="system_a")
    )
    await apply(engine, handlers, from_a)
    await apply(engine, handlers, from_b)
    assert (await fetch(engine, Organization, org_id)).name == "B"
    await apply(engine, handlers, from_a)
    assert (await fetch(engine, Organization, org_id)).name == "B"


async def test_delete_before_create_leaves_a_tombstone(
    engine: AsyncEngine, handlers: SyncHandlers
) -> None:
    org_id = new_id()
    # A foreign producer's delete without deleted_at: a tombstone at occurred_at.
    delete = envelope("organization", "deleted", org_payload(org_id, at=T0 + US))
    await apply(engine, handlers, delete)
    await apply(engine, handlers, envelope("organization", "created", org_payload(org_id, at=T0)))
    row = await fetch(engine, Organization, org_id)
    assert row.deleted_at is not None and row.deleted_at >= T0 + US


async def test_user_before_its_organization_is_retried(
    engine: AsyncEngine, handlers: SyncHandlers
) -> None:
    org_id, user_id = new_id(), new_id()
    user = envelope("user", "created", user_payload(user_id, org_id, at=T0))
    with pytest.raises(Retry, match="has not arrived"):
        await apply(engine, handlers, user)
    assert await count(engine, User) == 0
    await apply(engine, handlers, envelope("organization", "created", org_payload(org_id, at=T0)))
    await apply(engine, handlers, user)
    assert (await fetch(engine, User, user_id)).email == "ann@example.com"


async def test_natural_key_collision_with_a_local_record_is_a_recorded_conflict(
    engine: AsyncEngine, handlers: SyncHandlers
) -> None:
    local_id, remote_id = new_id(), new_id()
    # system_b (this side) created acme.test itself...
    await apply(
        engine,
        handlers,
        envelope(
            "organization",
            "created",
            org_payload(local_id, at=T0, origin="system_b"),
            producer="system_b",
        ),
    )
    remote = envelope("organization", "created", org_payload(remote_id, at=T0 + US, name="Theirs"))
    for _ in range(2):  # a redelivery records the conflict once
        with pytest.raises(Reject) as exc:
            await apply(engine, handlers, remote)
        assert exc.value.reason == "conflict"
    assert await fetch(engine, Organization, remote_id) is None
    async with AsyncSession(engine) as session:
        conflict = (await session.scalars(select(SyncConflict))).one()
    assert (conflict.local_id, conflict.incoming_id) == (local_id, remote_id)
    assert (conflict.key_name, conflict.key_value, conflict.incoming_origin) == (
        "domain",
        "acme.test",
        "system_a",
    )
    assert (
        conflict.incoming_values["name"] == "Theirs"
        and conflict.local_values["origin"] == "system_b"
    )


async def test_collision_with_the_senders_own_older_version_is_transient(
    engine: AsyncEngine, handlers: SyncHandlers
) -> None:
    first, second = new_id(), new_id()
    # On A: `first` had acme.test, then moved to other.test; then `second` took acme.test.
    await apply(engine, handlers, envelope("organization", "created", org_payload(first, at=T0)))
    takes_domain = envelope("organization", "created", org_payload(second, at=T0 + 2 * US))
    with pytest.raises(Retry, match="still in flight"):
        await apply(engine, handlers, takes_domain)  # arrived before first's move
    await apply(
        engine,
        handlers,
        envelope("organization", "updated", org_payload(first, at=T0 + US, domain="other.test")),
    )
    await apply(engine, handlers, takes_domain)
    assert (await fetch(engine, Organization, second)).domain == "acme.test"
    assert await count(engine, SyncConflict) == 0


async def test_invalid_payloads_are_rejected(engine: AsyncEngine, handlers: SyncHandlers) -> None:
    org_id = new_id()
    bad = [
        org_payload(org_id, at=T0, name=None),
        org_payload(org_id, at=T0, active="yes"),
        org_payload(org_id, at=T0, updated_at="yesterday"),
        {"id": org_id},
        org_payload(org_id, at=T0, id="not-an-id"),
        org_payload(org_id, at=T0, id=str(org_id)),  # an id in an event is never text
        org_payload(org_id, at=T0, id=float(org_id)),
        org_payload(org_id, at=T0, id=True),
        org_payload(org_id, at=T0, id=2**64),
    ]
    for payload in bad:
        env = Envelope(
            event_type="organization.updated",
            producer="system_a",
            resource_type="organization",
            resource_id=str(org_id),
            payload=payload,
        )
        with pytest.raises(Reject) as exc:
            await apply(engine, handlers, env)
        assert exc.value.reason == "invalid_payload"
    assert await count(engine, Organization) == 0
