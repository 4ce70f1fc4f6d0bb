"""The services' batch sync handlers give exactly the per-event handlers' result.

Two databases, migrated and seeded alike; the same envelopes (same event ids) are
published to two streams and consumed by a real InboxProcessor each: one with
``SyncHandlers.register(router)`` (batch handlers, the default), one with
``register(router, batch=False)`` (per-event).  Outcomes, dead-letter reasons,
rows, stale-event and conflict records and inbox records must be equal.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from consumer_support import Stack, build_stack, close_stack, make_config
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from test_inbox import fetch
from test_inbox_optimistic import statements

from bridge.envelope import Envelope, format_timestamp
from bridge.ids import compose
from bridge.outbox.capture import ensure_capture_off
from bridge.testing import NatsServer, PostgresServer
from bridge.transport.delivery import Outcome
from services.shared.db import migrate
from services.shared.handlers import SyncHandlers

T0 = datetime(2026, 3, 1, 9, 0, 0, 500000, tzinfo=UTC)
US = timedelta(microseconds=1)
ids = list(itertools.islice(itertools.count(compose(datetime.now(UTC), 0, 1), 64), 20))
(O1, O2, O_DIV, O_OLD, O_SAME, O_LOCAL, P, Q, O_DEL, O_LATE, O3) = ids[:11]
(U1, U2, U3, U4) = ids[11:15]
KNOWN = frozenset({"system_a", "system_b"})


def org(oid: int, at: datetime, origin: str = "system_a", **over: Any) -> dict[str, Any]:
    row = {
        "id": oid,
        "name": f"Org {str(oid)[-8:]}",
        "domain": f"{oid}.test",
        "active": True,
        "created_at": format_timestamp(T0),
        "updated_at": format_timestamp(at),
        "origin": origin,
        "deleted_at": None,
    }
    return row | over


def user(uid: int, oid: int, at: datetime, **over: Any) -> dict[str, Any]:
    row = {
        "id": uid,
        "organization_id": oid,
        "name": "Ann",
        "email": f"{uid}@example.com",
        "role": "member",
        "active": True,
        "created_at": format_timestamp(T0),
        "updated_at": format_timestamp(at),
        "origin": "system_a",
        "deleted_at": None,
    }
    return row | over


def ev(resource: str, action: str, payload: dict[str, Any], producer: str = "system_a") -> Envelope:
    return Envelope(
        event_type=f"{resource}.{action}",
        producer=producer,
        resource_type=resource,
        resource_id=str(payload["id"]),
        payload=payload,
    )


SEED = [  # identical local rows in both databases before any event
    org(O_DIV, T0, name="Hand edited"),  # same version, content differs
    org(O_OLD, T0 + 10 * US),
    org(O_SAME, T0),
    org(O_LOCAL, T0, origin="system_b", domain="taken.test"),  # written here
    org(P, T0, domain="moving.test"),
]


@dataclass
class Side:
    stack: Stack
    outcomes: list[list[Outcome]]


@pytest.fixture
async def sides(
    nats_server: NatsServer, postgres: PostgresServer, database_url: str, unique: str
) -> AsyncIterator[tuple[Side, Side]]:
    second_url = await postgres.create_database()
    stacks: list[Stack] = []
    try:
        for n, (url, batch) in enumerate(((database_url, True), (second_url, False))):
            await migrate(url)
            # the events come from "system_a" / "system_b": known systems of this consumer
            cfg = make_config(nats_server.url, f"{unique}{n}", known_origins=KNOWN)
            stack = await build_stack(cfg, url)
            stacks.append(stack)
            SyncHandlers(stack.engine, "system_b").register(stack.router, batch=batch)
            async with stack.engine.begin() as conn:
                await conn.execute(text("SET LOCAL bridge.capture = 'off'"))  # before sync
                for row in SEED:
                    values = dict(row)
                    for k in ("created_at", "updated_at"):
                        values[k] = datetime.fromisoformat(str(values[k]))
                    await conn.execute(
                        text(
                            "INSERT INTO organizations (id, name, domain, active, created_at, "
                            "updated_at, origin, deleted_at) VALUES (:id, :name, :domain, "
                            ":active, :created_at, :updated_at, :origin, :deleted_at)"
                        ),
                        values,
                    )
        yield Side(stacks[0], []), Side(stacks[1], [])
    finally:
        for stack in stacks:
            await close_stack(stack)
        await postgres.drop_database(second_url)


async def snapshot(stack: Stack) -> dict[str, list[tuple[Any, ...]]]:
    queries = {
        "organizations": "SELECT * FROM organizations ORDER BY id",
        "users": "SELECT * FROM users ORDER BY id",
        "stale": "SELECT event_id, resource_type, resource_id, incoming_updated_at, "
        "incoming_origin, local_updated_at, local_origin FROM sync_stale_events ORDER BY 1",
        "conflicts": "SELECT event_id, resource_type, key_name, key_value, local_id, "
        "incoming_id, incoming_origin, incoming_values FROM sync_conflicts ORDER BY 1",
        "inbox": "SELECT event_id, status, attempts, last_error FROM bridge_inbox ORDER BY 1",
    }
    async with stack.engine.connect() as conn:
        return {
            name: [tuple(row) for row in await conn.execute(text(sql))]
            for name, sql in queries.items()
        }


async def test_batch_handlers_give_the_per_event_result(sides: tuple[Side, Side]) -> None:
    batch_side, event_side = sides
    # 1: everything applies, is the same version or is stale: the fast path
    fast = [
        ev("organization", "created", org(O1, T0)),
        ev("organization", "updated", org(O1, T0 + 2 * US, name="One v2")),
        ev("organization", "updated", org(O1, T0 + US, name="One v1")),  # stale in the run
        ev("organization", "created", org(O2, T0, origin="system_b")),  # our own, same version
        ev("organization", "updated", org(O_DIV, T0)),  # repair by the version's origin
        ev("organization", "updated", org(O_OLD, T0 + 5 * US)),  # stale against the row
        ev("organization", "updated", org(O_SAME, T0)),  # same version: nothing
        ev("organization", "deleted", org(O_DEL, T0 + 3 * US, deleted_at=None)),  # hard delete
        ev("organization", "created", org(O_DEL, T0)),  # late create: stays a tombstone
        ev(
            "organization",
            "deleted",
            org(O1, T0 + 4 * US, deleted_at=format_timestamp(T0 + 4 * US)),
        ),
        ev("organization", "created", org(O3, T0, domain=f"{O1}.test")),  # O1's freed domain
        ev("user", "created", user(U1, O1, T0)),  # its organization earlier in the batch
        ev("user", "created", user(U2, O2, T0)),
        ev("user", "updated", user(U2, O2, T0 + US, role="admin")),
        ev("user", "updated", user(U1, O1, T0 + US, email="ann.new@example.com")),
        ev("user", "updated", user(U2, O2, T0 + 2 * US, email=f"{U1}@example.com")),  # U1's old
        ev("organization", "updated", org(O2, T0 + US, name="Two v2")),
    ]
    # 2: cases for the per-event rules: a user before its organization (retried),
    # a key held by a record written here (conflict), a key moved in the same batch
    slow = [
        ev("user", "created", user(U3, O_LATE, T0)),
        ev("organization", "created", org(O_LATE, T0)),
        ev("user", "created", user(U4, O_LATE, T0)),
        ev("organization", "created", org(Q, T0, domain="taken.test")),
        ev("organization", "updated", org(P, T0 + US, domain="moved.test")),
        ev("organization", "created", org(ids[15], T0, domain="moving.test")),
        ev("organization", "created", {"id": str(ids[16]), "name": "no domain"}),
        ev("organization", "updated", org(O2, T0 + 2 * US, name="Two v3")),
    ]
    for side in sides:
        for events in (fast, slow):
            for env in events:
                await side.stack.publish(env)
        sub = await side.stack.pull_sub()
        for n, events in enumerate((fast, slow)):
            batch = await fetch(side.stack, sub, len(events))
            with statements(side.stack) as seen:
                side.outcomes.append(await side.stack.processor.process_batch(batch))
            if side is batch_side and n == 0:
                fast_statements = len(seen)
        retried = await fetch(side.stack, sub, 1, timeout=10)  # U3, after its backoff
        side.outcomes.append(await side.stack.processor.process_batch(retried))
        await sub.unsubscribe()

    assert batch_side.outcomes == event_side.outcomes
    assert batch_side.outcomes[0] == [Outcome.ACKED] * len(fast)
    failed = {i: o for i, o in enumerate(batch_side.outcomes[1]) if o is not Outcome.ACKED}
    assert failed == {0: Outcome.RETRIED, 3: Outcome.DEAD_LETTERED, 6: Outcome.DEAD_LETTERED}
    assert batch_side.outcomes[2] == [Outcome.ACKED]
    # the fast batch: one optimistic attempt, constant statements (claim, then per run
    # of a resource: lock+load, natural keys, stale insert, upsert; users: + parents)
    processor = batch_side.stack.processor
    assert (processor.optimistic_batches, processor.fallback_batches) == (2, 1)
    assert fast_statements <= 1 + 3 * 4 + 5, fast_statements
    reasons = [
        sorted(letter.reason for letter in await side.stack.dead_letters.list()) for side in sides
    ]
    assert reasons[0] == reasons[1] == ["conflict", "invalid_payload"]

    got, want = await snapshot(batch_side.stack), await snapshot(event_side.stack)
    assert got == want
    assert len(got["organizations"]) == 11 and len(got["users"]) == 4
    assert len(got["stale"]) == 3 and len(got["conflicts"]) == 1


async def test_a_record_inserted_concurrently_is_not_overwritten_unjudged(
    database_url: str,
) -> None:
    """Two batches create one record at once: the later insert fails (the per-event
    rules then judge it against the committed row) instead of overwriting it."""
    await migrate(database_url)
    engine = create_async_engine(database_url)
    try:
        handlers = SyncHandlers(engine, "system_b")
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        newer = [ev("organization", "updated", org(O1, T0 + US, name="newer"))]
        newer.append(ev("organization", "created", org(O2, T0)))
        older = [ev("organization", "created", org(O1, T0, name="older"))]
        older.append(ev("organization", "created", org(O3, T0)))
        async with sessions() as first, sessions() as second:
            async with first.begin():
                await ensure_capture_off(first)  # as the inbox does: a peer's change
                await handlers.organizations(first, newer)
                # the second batch did not see O1 (not committed): it inserts it too
                late = asyncio.create_task(_apply_in(second, handlers, older))
                await asyncio.sleep(0.3)
                assert not late.done()  # waits on the first one's uncommitted key
            with pytest.raises(IntegrityError):
                await late
        async with sessions() as check:
            names = dict((await check.execute(text("SELECT id, name FROM organizations"))).all())
        assert names == {O1: "newer", O2: names[O2]}
    finally:
        await engine.dispose()


async def _apply_in(session: AsyncSession, handlers: SyncHandlers, envs: list[Envelope]) -> None:
    async with session.begin():
        await ensure_capture_off(session)
        await handlers.organizations(session, envs)
