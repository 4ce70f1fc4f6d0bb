"""Stopping consumers (pull and push) with deliveries in flight: nothing lost, nothing twice."""

from __future__ import annotations

import asyncio

import pytest
from consumer_support import (
    Stack,
    build_stack,
    close_stack,
    make_config,
    org_event,
    record_effect,
    wait_until,
)
from sqlalchemy.ext.asyncio import AsyncSession

from bridge.config import ConsumerOptions
from bridge.envelope import Envelope
from bridge.runtime import make_consumer
from bridge.testing import NatsServer


@pytest.mark.parametrize("mode", ["pull", "push"])
async def test_stop_with_deliveries_in_flight_loses_and_repeats_nothing(
    mode: str, nats_server: NatsServer, unique: str, database_url: str
) -> None:
    """100 deliveries in flight; stop with a deadline shorter than the work (a
    SIGTERM during a deploy).  Whatever was not acked is redelivered to the next
    consumer: every event is applied exactly once."""

    async def handler(session: AsyncSession, env: Envelope) -> None:
        await asyncio.sleep(0.02)  # a worker's share of a batch takes ~0.25 s
        await record_effect(session, env)

    cfg = make_config(
        nats_server.url,
        unique,
        consumer_mode=mode,
        ack_wait=1.0,
        backoff=(1.0,),
        consumer=ConsumerOptions(batch_size=25, fetch_timeout=0.5, concurrency=2),
    )
    stack = await build_stack(cfg, database_url)
    try:
        stack.router.on("organization.created", handler)
        for i in range(100):
            await stack.publish(org_event(cfg, f"r{i}"))
        first = make_consumer(cfg, stack.connection, stack.processor)
        await first.start()

        async def some_done() -> bool:
            return await stack.effects() >= 10

        await wait_until(some_done, timeout=10, interval=0.01)
        assert first.stats().in_flight > 0
        await first.stop(timeout=0.2)  # too short to finish: some batches are abandoned
        stopped_at = await stack.effects()
        assert stopped_at < 100
        assert first.stats().running is False

        second = await stack.start_consumer()

        async def all_done() -> bool:
            return await stack.effects() == 100

        await wait_until(all_done, timeout=20)
        assert await stack.scalar("SELECT count(DISTINCT event_id) FROM effects") == 100
        assert (await stack.processor.counts()).processed == 100
        await asyncio.sleep(1.2)  # nothing else is redelivered and applied again
        assert await stack.effects() == 100
        assert second.stats().outcomes.get("acked", 0) == 100 - stopped_at
        assert second.stats().redeliveries > 0  # the abandoned deliveries came back
    finally:
        await close_stack(stack)


async def test_graceful_stop_finishes_and_acks_what_it_holds(stack: Stack) -> None:
    async def handler(session: AsyncSession, env: Envelope) -> None:
        await asyncio.sleep(0.005)
        await record_effect(session, env)

    stack.router.on("organization.created", handler)
    for i in range(100):
        await stack.publish(org_event(stack.cfg, f"r{i}"))
    consumer = await stack.start_consumer()

    async def started() -> bool:
        return await stack.effects() >= 1

    await wait_until(started, timeout=10, interval=0.01)
    await consumer.stop(timeout=10)
    applied = await stack.effects()
    stats = consumer.stats()
    assert stats.outcomes.get("acked", 0) == applied
    # everything applied was acked: nothing pending acknowledgement on the server
    info = await stack.connection.js.consumer_info(
        stack.cfg.stream_name, stack.cfg.subjects.durable
    )
    assert info.num_ack_pending == 0
    assert info.num_pending == 100 - applied
