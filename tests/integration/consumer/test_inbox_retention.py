"""Inbox retention: old settled records go, failed and young ones stay; the loop runs and
stops; the Bridge runs it with its consumer."""

from __future__ import annotations

import uuid

from consumer_support import Stack, org_event, record_effect, wait_until
from sqlalchemy import text

from bridge.config import BridgeConfig, ConsumerOptions
from bridge.inbox.retention import InboxRetention
from bridge.runtime import Bridge


async def _insert(stack: Stack, status: str, age_seconds: float) -> str:
    event_id = str(uuid.uuid4())
    async with stack.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO bridge_inbox (event_id, subject, status, received_at, processed_at)"
                " VALUES (:id, 's', :status, now() - make_interval(secs => :age),"
                " CASE WHEN :processed THEN now() - make_interval(secs => :age) END)"
            ),
            {
                "id": event_id,
                "status": status,
                "age": age_seconds,
                "processed": status == "processed",
            },
        )
    return event_id


async def _remaining(stack: Stack) -> set[str]:
    async with stack.engine.connect() as conn:
        rows = await conn.execute(text("SELECT event_id::text FROM bridge_inbox"))
        return {r[0] for r in rows}


async def test_purge_deletes_only_old_settled_records(stack: Stack) -> None:
    old_processed = await _insert(stack, "processed", 7200)
    old_dead = await _insert(stack, "dead_lettered", 7200)
    old_failed = await _insert(stack, "failed", 7200)
    young_processed = await _insert(stack, "processed", 10)
    retention = InboxRetention(stack.engine, ConsumerOptions(inbox_retention=3600.0))

    assert await retention.purge() == 2

    remaining = await _remaining(stack)
    assert remaining == {old_failed, young_processed}
    assert old_processed not in remaining and old_dead not in remaining
    assert await retention.purge() == 0


async def test_cleanup_loop_purges_processed_events_then_stops(stack: Stack) -> None:
    stack.router.on_resource("organization", record_effect)
    for i in range(3):
        await stack.publish(org_event(stack.cfg, str(i)))
    await stack.start_consumer()
    await wait_until(lambda: _count_is(stack, 3))
    options = ConsumerOptions(inbox_retention=0.2, inbox_cleanup_interval=0.1)
    retention = InboxRetention(stack.engine, options)
    await retention.start()
    assert retention.running
    try:
        await wait_until(lambda: _count_is(stack, 0))
        assert retention.purged_total == 3
    finally:
        await retention.stop(timeout=5.0)
    assert not retention.running
    assert await stack.effects() == 3  # the handlers' writes stay, only the records go


async def _count_is(stack: Stack, n: int) -> bool:
    return int(await stack.scalar("SELECT count(*) FROM bridge_inbox")) == n


async def test_bridge_runs_retention_with_its_consumer(stack: Stack, cfg: BridgeConfig) -> None:
    bridge = Bridge(cfg, engine=stack.engine, router=stack.router)
    await bridge.start()
    try:
        assert bridge.inbox_retention is not None and bridge.inbox_retention.running
    finally:
        await bridge.stop(timeout=5.0)
    assert bridge.inbox_retention is None

    no_inbox = Bridge(cfg.with_(use_inbox=False), engine=stack.engine, router=stack.router)
    await no_inbox.start()
    try:
        assert no_inbox.inbox_retention is None
    finally:
        await no_inbox.stop(timeout=5.0)
