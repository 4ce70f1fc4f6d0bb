"""Versioned events on the consumer path (real NATS + PostgreSQL, library level).

Old versions are upcast before the handler (counted once per delivery, even when the
batch is re-run on the savepoint path); a too-new version is dead-lettered with reason
``unsupported_schema_version`` without stopping later events, and applies after
replay once the consumer declares it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from consumer_support import Stack, org_event, record_effect, wait_until
from sqlalchemy.ext.asyncio import AsyncSession

from bridge.envelope import Envelope
from bridge.errors import Retry
from bridge.event_schemas import EventSchemas
from bridge.inbox.processor import InboxProcessor
from bridge.observability.metrics import BridgeMetrics
from bridge.routing.outcomes import REASON_UNSUPPORTED_SCHEMA_VERSION


def requires(*names: str) -> Any:
    def validate(payload: Mapping[str, Any]) -> Mapping[str, Any]:
        missing = [name for name in names if name not in payload]
        if missing:
            raise ValueError(f"{', '.join(missing)}: field required")
        return payload

    return validate


def schemas_up_to(current: int) -> EventSchemas:
    """organization v1 {name}, v2 adds ``version``, v3 adds ``tier``."""
    schemas = EventSchemas()
    schemas.version("organization", 1, requires("name"))
    schemas.version("organization", 2, requires("name", "version"))
    schemas.upcaster("organization", 1, lambda p, env: {**p, "version": 7})
    if current >= 3:
        schemas.version("organization", 3, requires("name", "version", "tier"))
        schemas.upcaster("organization", 2, lambda p, env: {**p, "tier": "free"})
    return schemas


def at(version: int, env: Envelope) -> Envelope:
    return replace(env, schema_version=version)


def upcasts(metrics: BridgeMetrics, from_version: int) -> float:
    value = metrics.registry.get_sample_value(
        "bridge_event_upcasts_total",
        {"event_type": "organization.created", "from_version": str(from_version)},
    )
    return value or 0.0


async def test_upcast_unsupported_then_replayed_after_upgrade(stack: Stack) -> None:
    seen: list[tuple[str, int, dict[str, Any]]] = []
    flaky = {"fail": True}

    async def handler(session: AsyncSession, env: Envelope) -> None:
        if env.resource_id == "flaky" and flaky.pop("fail", False):
            raise Retry("first run fails: the batch goes to the savepoint path", delay=0.1)
        seen.append((env.resource_id, env.schema_version, dict(env.payload)))
        await record_effect(session, env)

    stack.router.on_resource("organization", handler)
    metrics = BridgeMetrics()
    processor = InboxProcessor(
        stack.cfg,
        stack.sessions,
        stack.router,
        stack.dead_letters,
        schemas=schemas_up_to(2),
        schema_observer=metrics,
    )
    old = at(1, org_event(stack.cfg, "old", name="gem"))
    flaky_event = at(2, org_event(stack.cfg, "flaky", name="f", version=1))
    too_new = at(3, org_event(stack.cfg, "new", name="n", version=3, tier="gold"))
    later = at(2, org_event(stack.cfg, "later", name="l", version=2))
    for env in (old, flaky_event, too_new, later):
        await stack.publish(env)
    consumer = await stack.start_consumer(processor=processor)

    async def settled() -> bool:
        return {"old", "flaky", "later"} <= {r for r, _, _ in seen} and bool(
            await stack.dead_letters.list()
        )

    await wait_until(settled, timeout=15)
    by_id = {rid: (version, payload) for rid, version, payload in seen}
    # v1 reached the handler as v2, upcaster applied; one upcast for one delivery even
    # though the batch ran twice (optimistic attempt rolled back by the flaky handler)
    assert by_id["old"] == (2, {"name": "gem", "version": 7})
    assert processor.fallback_batches >= 1 and upcasts(metrics, 1) == 1.0
    assert "new" not in by_id  # never handed to the handler
    assert by_id["later"][0] == 2  # the consumer kept going after the too-new event

    [letter] = await stack.dead_letters.list()
    assert letter.reason == REASON_UNSUPPORTED_SCHEMA_VERSION
    assert letter.headers["x-dlq-reason"] == "unsupported_schema_version"
    assert "schema_version 3 is newer" in letter.error_message
    assert letter.deliveries == 1  # dead-lettered on its first delivery: no retry loop
    assert letter.envelope().schema_version == 3  # the original body is kept
    assert (
        metrics.registry.get_sample_value(
            "bridge_unsupported_schema_versions_total",
            {"event_type": "organization.created", "version": "3"},
        )
        == 1.0
    )
    status = await stack.scalar(
        "SELECT status FROM bridge_inbox WHERE event_id = :e", e=too_new.event_id
    )
    assert status == "dead_lettered"

    # Upgrade: the consumer now knows v3; the replay (new event id, same version) applies.
    await consumer.stop(timeout=5)
    stack.consumers.remove(consumer)
    upgraded = InboxProcessor(
        stack.cfg, stack.sessions, stack.router, stack.dead_letters, schemas=schemas_up_to(3)
    )
    await stack.start_consumer(processor=upgraded)
    replayed = await stack.dead_letters.replay(letter.seq)
    assert replayed.stream_seq > letter.seq and replayed.handled

    async def applied() -> bool:
        return any(rid == "new" for rid, _, _ in seen)

    await wait_until(applied, timeout=15)
    by_id = {rid: (version, payload) for rid, version, payload in seen}
    assert by_id["new"] == (3, {"name": "n", "version": 3, "tier": "gold"})
