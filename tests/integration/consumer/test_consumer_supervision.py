"""A consumer task that dies is restarted, counted, and lets go of what it held.

Fault injection: :class:`Killer` derives from ``BaseException``, so no ``except
Exception`` in the library stops it — the way a library bug, a stray
``CancelledError`` or an exotic exception from a handler ends a task.  Everything
else is real (nats-server, PostgreSQL).  ``ack_wait`` is 30 s here and every wait a
third of it: the deliveries a dead task held must come back at once (NAKed), not be
kept alive by the in-progress ticker nor wait for the server's ack timeout.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from consumer_support import Stack, make_config, org_event, record_effect, wait_until
from sqlalchemy.ext.asyncio import AsyncSession

from bridge.config import BridgeConfig, ConsumerOptions
from bridge.consumer.pull import PullConsumer
from bridge.consumer.push import PushConsumer
from bridge.envelope import Envelope
from bridge.testing import NatsServer
from bridge.transport.delivery import Delivery

ACK_WAIT = 30.0
WITHIN = ACK_WAIT / 3


@pytest.fixture
def cfg(nats_server: NatsServer, unique: str) -> BridgeConfig:
    return make_config(nats_server.url, unique, ack_wait=ACK_WAIT)


class Killer(BaseException):
    """Ends whatever task it reaches (fault injection)."""


async def test_a_worker_killed_by_an_unexpected_exception_is_restarted(stack: Stack) -> None:
    kills = 1

    async def handler(session: AsyncSession, env: Envelope) -> None:
        nonlocal kills
        if kills:
            kills -= 1
            raise Killer("worker killed mid-batch")
        await record_effect(session, env)

    stack.router.on("organization.created", handler)
    consumer = await stack.start_consumer()
    await stack.publish(org_event(stack.cfg, "1"))

    async def applied_first() -> bool:
        return await stack.effects() == 1

    await wait_until(applied_first, timeout=WITHIN)
    await stack.publish(org_event(stack.cfg, "2"))

    async def acked_second() -> bool:  # counted once its ack is sent
        stats = consumer.stats()
        return stats.outcomes.get("acked") == 2 and stats.in_flight == 0

    await wait_until(acked_second, timeout=WITHIN)
    assert await stack.effects() == 2
    stats = consumer.stats()
    assert stats.task_restarts == 1 and stats.running
    health = consumer.health()
    assert health.healthy, health  # one death, restarted at once: not a crash loop
    assert "Killer" in (health.last_error or "")


async def test_a_worker_that_keeps_dying_makes_the_consumer_unhealthy(stack: Stack) -> None:
    async def handler(session: AsyncSession, env: Envelope) -> None:
        raise Killer("this handler always kills its worker")

    stack.router.on("organization.created", handler)
    consumer = await stack.start_consumer()
    assert consumer.health().healthy
    for i in range(2):
        await stack.publish(org_event(stack.cfg, f"r{i}"))

    async def crash_looping() -> bool:
        return any("crash-looping" in problem for problem in consumer.health().problems)

    await wait_until(crash_looping, timeout=WITHIN)
    health = consumer.health()
    assert not health.healthy and health.task_restarts >= 3
    assert any("worker-0" in problem and "Killer" in problem for problem in health.problems), health
    assert consumer.stats().task_restarts == health.task_restarts


class _DyingReceive:
    """Mixin: the first received batch kills the receive task while it hands it out."""

    trapped = False

    async def _receive(self) -> Sequence[Delivery]:
        deliveries = list(await super()._receive())  # type: ignore[misc]
        if deliveries and not self.trapped:
            self.trapped = True
            deliveries[-1] = _Trap(deliveries[-1])
        return deliveries


class _Trap:
    """A delivery whose body kills the first reader (then behaves)."""

    def __init__(self, inner: Delivery) -> None:
        self.inner = inner
        self.sprung = False

    @property
    def data(self) -> bytes:
        if not self.sprung:
            self.sprung = True
            raise Killer("receive task killed while handing out a batch")
        return self.inner.data

    headers = property(lambda self: self.inner.headers)
    subject = property(lambda self: self.inner.subject)
    stream = property(lambda self: self.inner.stream)
    stream_seq = property(lambda self: self.inner.stream_seq)
    num_delivered = property(lambda self: self.inner.num_delivered)

    async def ack(self) -> None:
        await self.inner.ack()

    async def nak(self, delay: float | None = None) -> None:
        await self.inner.nak(delay)

    async def term(self) -> None:
        await self.inner.term()

    async def in_progress(self) -> None:
        await self.inner.in_progress()


class DyingPull(_DyingReceive, PullConsumer):
    pass


class DyingPush(_DyingReceive, PushConsumer):
    pass


@pytest.mark.parametrize("concurrency", [1, 2])
async def test_a_dead_receive_task_is_restarted_and_its_batch_comes_back(
    stack: Stack, concurrency: int
) -> None:
    stack.router.on("organization.created", record_effect)
    cfg = stack.cfg.with_(
        consumer=ConsumerOptions(batch_size=64, fetch_timeout=0.5, concurrency=concurrency)
    )
    processor = stack.processor_for(cfg)
    for i in range(5):
        await stack.publish(org_event(cfg, f"r{i}"))
    consumer = DyingPull(cfg, stack.connection, processor)
    stack.consumers.append(consumer)
    await consumer.start()

    async def all_acked() -> bool:
        return consumer.stats().outcomes.get("acked") == 5

    # The receive task died holding 5 deliveries: they are NAKed, not kept alive by
    # the in-progress ticker (which would hide them from the server for ever).
    await wait_until(all_acked, timeout=WITHIN)
    assert consumer.trapped and await stack.effects() == 5
    stats = consumer.stats()
    assert stats.task_restarts == 1 and stats.running
    assert stats.outcomes == {"acked": 5}
    await stack.publish(org_event(cfg, "after"))

    async def six() -> bool:
        return await stack.effects() == 6

    await wait_until(six, timeout=WITHIN)


async def test_a_dead_push_receive_task_is_restarted(stack: Stack) -> None:
    cfg = stack.cfg.with_(consumer_mode="push")
    await stack.reprovision(cfg)
    stack.router.on("organization.created", record_effect)
    consumer = DyingPush(cfg, stack.connection, stack.processor_for(cfg))
    stack.consumers.append(consumer)
    await consumer.start()
    for i in range(3):
        await stack.publish(org_event(cfg, f"r{i}"))

    async def all_applied() -> bool:
        return await stack.effects() == 3

    await wait_until(all_applied, timeout=WITHIN)
    assert consumer.trapped and consumer.stats().task_restarts == 1
