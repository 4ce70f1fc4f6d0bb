"""``bridge.testing.BridgeHarness`` on the services' own bridge (built as in production,
not started) and a migrated database, without a NATS server: what a delivery becomes —
acked and applied, a duplicate, retried with the backoff delay (a user before its
organization), dead-lettered with its reason (an invalid payload, a malformed body, a
handler bug after ``max_deliver``) — and the inbox record it leaves."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from bridge import BridgeConfig, Envelope, Router
from bridge.envelope import format_timestamp
from bridge.ids import compose
from bridge.testing import BridgeHarness, MemoryDelivery
from bridge.transport.delivery import Delivery
from services.shared.app import build_bridge
from services.shared.db import migrate
from services.shared.models import Organization

CONFIG = BridgeConfig(
    app_name="system_b", destination_app="system_a", max_deliver=3, backoff=(1.0, 5.0)
)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    await migrate(database_url)
    engine = create_async_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def harness(engine: AsyncEngine) -> BridgeHarness:
    return BridgeHarness.of(build_bridge(CONFIG, engine))


def event(resource: str, payload: dict[str, Any], action: str = "created") -> Envelope:
    return Envelope(
        event_type=f"{resource}.{action}", producer="system_a", resource_type=resource,
        resource_id=str(payload["id"]), payload=payload, schema_version=2, origin="system_a",
    )  # fmt: skip


_IDS = itertools.count(compose(datetime.now(UTC), 0, 1), 64)  # fresh ids, one per tick


def organization(**over: Any) -> dict[str, Any]:
    now = format_timestamp(datetime.now(UTC))
    return {"id": next(_IDS), "name": "Acme", "domain": f"{uuid.uuid4().hex}.test",
            "active": True, "created_at": now, "updated_at": now, "origin": "system_a",
            "deleted_at": None, **over}  # fmt: skip


def test_the_memory_delivery_is_a_delivery() -> None:
    memory = MemoryDelivery(b"{}", None, "a.sync.b", "s", 1, 1)
    assert isinstance(memory, Delivery)


async def test_an_organization_is_applied_once_and_its_redelivery_is_a_duplicate(
    harness: BridgeHarness, engine: AsyncEngine
) -> None:
    envelope = event("organization", organization(name="Acme"))
    delivered = await harness.deliver(envelope)
    assert delivered.outcome == "acked" and delivered.error is None
    assert delivered.inbox is not None and delivered.inbox.status == "processed"
    async with AsyncSession(engine) as session:
        name = await session.scalar(
            select(Organization.name).where(Organization.id == int(envelope.resource_id))
        )
    assert name == "Acme"
    again = await harness.deliver(envelope, delivery=2)
    assert again.outcome == "duplicate"


async def test_a_user_before_its_organization_is_retried_with_the_backoff_delay(
    harness: BridgeHarness,
) -> None:
    now = format_timestamp(datetime.now(UTC))
    user = {
        "id": next(_IDS), "organization_id": next(_IDS), "name": "Ann",
        "email": f"{uuid.uuid4().hex}@example.com", "role": "member", "active": True,
        "created_at": now, "updated_at": now, "origin": "system_a", "deleted_at": None,
    }  # fmt: skip
    delivered = await harness.deliver(event("user", user))
    assert delivered.outcome == "retried" and delivered.delay == 1.0
    assert delivered.inbox is not None and delivered.inbox.status == "failed"
    assert delivered.inbox.attempts == 1 and "organization" in (delivered.inbox.last_error or "")
    assert harness.dead_letters == []


async def test_an_invalid_payload_is_dead_lettered_with_its_reason_at_once(
    harness: BridgeHarness,
) -> None:
    envelope = event("organization", organization(name=None))
    delivered = await harness.deliver(envelope)
    assert delivered.outcome == "dead_lettered" and delivered.reason == "invalid_payload"
    assert delivered.dead_letter is not None
    assert delivered.dead_letter.event_id == envelope.event_id
    assert delivered.inbox is not None and delivered.inbox.status == "dead_lettered"


async def test_a_malformed_body_is_dead_lettered_without_an_inbox_record(
    harness: BridgeHarness,
) -> None:
    delivered = await harness.deliver(b'{"event_id": "not json')
    assert delivered.outcome == "dead_lettered" and delivered.reason == "malformed"
    assert delivered.envelope is None and delivered.inbox is None
    assert [letter.reason for letter in harness.dead_letters] == ["malformed"]


async def test_a_handler_bug_is_retried_until_max_deliver_then_dead_lettered(
    engine: AsyncEngine,
) -> None:
    router = Router()

    async def buggy(session: AsyncSession, envelope: Envelope) -> None:
        raise KeyError("price")

    router.on_resource("organization", buggy)
    harness = BridgeHarness(CONFIG, engine, router)
    results = await harness.deliver_until_settled(event("organization", organization()))
    assert [r.outcome for r in results] == ["retried", "retried", "dead_lettered"]
    assert [r.delay for r in results] == [1.0, 5.0, None]
    assert all(isinstance(r.error, KeyError) for r in results)
    assert results[-1].reason == "max_deliver_exceeded"
    assert results[-1].inbox is not None and results[-1].inbox.attempts == 3
