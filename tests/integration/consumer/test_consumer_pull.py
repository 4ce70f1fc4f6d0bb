"""PullConsumer against a real nats-server and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

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

from bridge.config import BridgeConfig, ConsumerOptions, Credentials
from bridge.envelope import Envelope
from bridge.errors import Reject
from bridge.provisioning.permissions import render_authorization
from bridge.testing import NatsServer


async def publish_versions(stack: Stack, cfg: BridgeConfig, resources: int, versions: int) -> None:
    """Versions 1..``versions`` of records ``r0``..: every record's version n before n+1."""
    for version in range(1, versions + 1):
        for r in range(resources):
            await stack.publish(org_event(cfg, f"r{r}", version=version))


async def test_failing_twice_then_succeeding_backs_off_and_processes_once(stack: Stack) -> None:
    calls: list[tuple[float, int]] = []

    async def flaky(session: AsyncSession, env: Envelope) -> None:
        calls.append((time.monotonic(), len(calls) + 1))
        if len(calls) <= 2:
            raise ConnectionError("downstream not ready")
        await record_effect(session, env)

    cfg = stack.cfg.with_(backoff=(0.5, 1.0), max_deliver=5)
    await stack.reprovision(cfg)
    stack.router.on("organization.created", flaky)
    await stack.publish(org_event(cfg))
    consumer = await stack.start_consumer(cfg, stack.processor_for(cfg))

    async def processed() -> bool:
        return await stack.effects() == 1

    await wait_until(processed, timeout=10)
    assert [n for _, n in calls] == [1, 2, 3]
    (t1, _), (t2, _), (t3, _) = calls
    assert t2 - t1 >= 0.45  # NAK delay backoff[0]
    assert t3 - t2 >= 0.9  # NAK delay backoff[1]
    assert await stack.scalar("SELECT attempts FROM bridge_inbox") == 3
    stats = consumer.stats()
    assert stats.outcomes == {"retried": 2, "acked": 1}
    assert stats.redeliveries == 2 and stats.in_flight == 0
    assert stats.running and stats.last_delivery_at is not None


async def test_light_traffic_is_applied_without_waiting_for_the_fetch_timeout(
    stack: Stack,
) -> None:
    stack.router.on("organization.created", record_effect)
    cfg = stack.cfg.with_(consumer=ConsumerOptions(batch_size=64, fetch_timeout=10.0))
    consumer = await stack.start_consumer(cfg, stack.processor_for(cfg))
    await asyncio.sleep(0.3)  # the consumer now waits inside a 10 s fetch
    start = time.monotonic()
    await stack.publish(org_event(cfg))

    async def processed() -> bool:
        return await stack.effects() == 1

    await wait_until(processed, timeout=10, interval=0.02)
    assert time.monotonic() - start < 5  # coarse: far below the 10 s fetch timeout
    assert consumer.stats().outcomes == {"acked": 1}
    await consumer.stop(timeout=1.0)  # does not wait out the 10 s fetch
    assert not consumer.stats().running


async def test_concurrency_keeps_per_resource_order(stack: Stack) -> None:
    seen: dict[str, list[int]] = defaultdict(list)

    async def handler(session: AsyncSession, env: Envelope) -> None:
        seen[env.resource_id].append(int(env.payload["version"]))
        await asyncio.sleep(0.001)  # let the workers interleave
        await record_effect(session, env)

    stack.router.on_resource("organization", handler)
    cfg = stack.cfg.with_(consumer=ConsumerOptions(batch_size=40, fetch_timeout=0.5, concurrency=4))
    resources, versions = 12, 10
    await publish_versions(stack, cfg, resources, versions)
    consumer = await stack.start_consumer(cfg, stack.processor_for(cfg))

    async def done() -> bool:
        return await stack.effects() == resources * versions

    await wait_until(done, timeout=20)
    assert all(v == list(range(1, versions + 1)) for v in seen.values()), seen
    assert len(seen) == resources
    assert consumer.stats().outcomes == {"acked": resources * versions}


async def test_long_handler_is_kept_alive_with_in_progress(stack: Stack) -> None:
    runs = 0

    async def slow(session: AsyncSession, env: Envelope) -> None:
        nonlocal runs
        runs += 1
        await asyncio.sleep(2.5)  # 2.5 x ack_wait
        await record_effect(session, env)

    # server-side ack_wait is max(ack_wait, backoff) = 1 s; in-progress every 0.5 s
    cfg = stack.cfg.with_(ack_wait=1.0, backoff=(1.0,))
    await stack.publish(org_event(cfg))
    await stack.reprovision(cfg)
    stack.router.on("organization.created", slow)
    consumer = await stack.start_consumer(cfg, stack.processor_for(cfg))

    async def processed() -> bool:
        return await stack.effects() == 1

    await wait_until(processed, timeout=10)
    await asyncio.sleep(1.2)  # a redelivery, if any, would arrive within ack_wait
    assert runs == 1
    assert consumer.stats().redeliveries == 0


@pytest.mark.parametrize("mode", ["pull", "push"])
async def test_survives_a_nats_restart(mode: str, unique: str, database_url: str) -> None:
    server = NatsServer().start()
    try:
        cfg = make_config(server.url, unique, consumer_mode=mode)
        stack = await build_stack(cfg, database_url)
        try:
            stack.router.on("organization.created", record_effect)
            consumer = await stack.start_consumer()
            await stack.publish(org_event(cfg, "before"))

            async def count_is(n: int) -> bool:
                return await stack.effects() == n

            await wait_until(lambda: count_is(1), timeout=10)
            server.stop()
            await asyncio.sleep(1.0)  # the consumer's fetches fail meanwhile
            server.start()
            await wait_until(lambda: _connected(stack), timeout=15)

            async def publish_after_restart() -> bool:
                try:
                    await stack.publish(org_event(cfg, "after"))
                except Exception:
                    return False
                return True

            await wait_until(publish_after_restart, timeout=10, interval=0.2)
            await wait_until(lambda: count_is(2), timeout=15)
            stats = consumer.stats()
            assert stats.running and stats.outcomes == {"acked": 2}
        finally:
            await close_stack(stack)
    finally:
        server.cleanup()


async def _connected(stack: Stack) -> bool:
    return stack.connection.is_connected


async def test_pull_with_least_privilege_app_user(unique: str, database_url: str) -> None:
    """The app user gets exactly bridge.provisioning.permissions' pull set: no stream/consumer
    management, only MSG.NEXT on its durable, acks, its own subjects and inbox."""
    probe = make_config("nats://127.0.0.1:4222", unique, auto_provision=False)
    auth = render_authorization(
        [probe], admin_user="admin", admin_password="adminpw", app_passwords={probe.app_name: "pw"}
    )
    server = NatsServer(config=auth).start()
    try:
        cfg = probe.with_(
            nats_urls=(server.url,), credentials=Credentials(user=probe.app_name, password="pw")
        )
        stack = await build_stack(
            cfg, database_url, admin=Credentials(user="admin", password="adminpw")
        )
        try:

            async def handler(session: AsyncSession, env: Envelope) -> None:
                if env.payload.get("reject"):
                    raise Reject("bad")
                await record_effect(session, env)

            stack.router.on("organization.created", handler)
            consumer = await stack.start_consumer()
            for i in range(3):
                await stack.publish(org_event(cfg, f"r{i}"))
            await stack.publish(org_event(cfg, "x", reject=True))

            async def settled() -> bool:
                return consumer.stats().outcomes == {"acked": 3, "dead_lettered": 1}

            await wait_until(settled, timeout=15)
            assert await stack.effects() == 3
            assert stack.admin_dead_letters is not None
            assert [d.reason for d in await stack.admin_dead_letters.list()] == ["rejected"]
            assert list(stack.connection.permission_errors) == []
        finally:
            await close_stack(stack)
    finally:
        server.cleanup()


async def test_prefetched_batches_keep_order_and_are_applied_before_stop(stack: Stack) -> None:
    """The next fetch runs while a batch is decoded and applied (bridge.consumer.pull,
    "Prefetch"): records still see their events in stream order across batches, and a
    stop in the middle applies and acks what was prefetched — nothing is left
    pending acknowledgement on the server."""
    seen: dict[str, list[int]] = defaultdict(list)

    async def handler(session: AsyncSession, env: Envelope) -> None:
        seen[env.resource_id].append(int(env.payload["version"]))
        await asyncio.sleep(0.002)  # slower than fetching: prefetched batches wait
        await record_effect(session, env)

    stack.router.on_resource("organization", handler)
    cfg = stack.cfg.with_(consumer=ConsumerOptions(batch_size=8, fetch_timeout=0.5, concurrency=1))
    resources, versions = 4, 30
    await publish_versions(stack, cfg, resources, versions)
    consumer = await stack.start_consumer(cfg, stack.processor_for(cfg))
    assert consumer.prefetch  # type: ignore[union-attr]

    async def some_done() -> bool:
        return await stack.effects() >= 24

    await wait_until(some_done, timeout=20, interval=0.01)
    await consumer.stop(timeout=10)
    applied = await stack.effects()
    assert consumer.stats().outcomes == {"acked": applied}
    info = await stack.connection.js.consumer_info(cfg.stream_name, cfg.subjects.durable)
    assert info.num_ack_pending == 0
    assert info.num_pending == resources * versions - applied
    # every record's events in order, without a gap
    assert all(v == list(range(1, len(v) + 1)) for v in seen.values()), seen

    rest = await stack.start_consumer(cfg, stack.processor_for(cfg))

    async def all_done() -> bool:
        return await stack.effects() == resources * versions

    await wait_until(all_done, timeout=30)
    await rest.stop(timeout=10)
    assert all(v == list(range(1, versions + 1)) for v in seen.values()), seen
