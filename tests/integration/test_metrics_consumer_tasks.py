"""``bridge_consumer_task_restarts_total`` and ``bridge_consumer_batch_errors_total``.

The consumer's supervision (:mod:`bridge.consumer._supervisor`) restarts a task that dies and
counts it; a batch whose processing raises is logged and counted.  These counters
follow those counts at scrape time, read without I/O: they stay on ``/metrics``
while the database is down (when the database-backed gauges are absent).

Fault injection: :class:`Killer` derives from ``BaseException``, so no ``except
Exception`` of the library stops it and it ends the worker that runs the handler
(as in tests/integration/consumer/test_consumer_supervision.py); an observer that
raises once stands for a bug in a batch's processing.  Everything else is real
(nats-server, PostgreSQL, a started :class:`~bridge.runtime.Bridge`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import nats
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncSession

from bridge.consumer.base import BatchObserver
from bridge.env import configure_bidirectional
from bridge.envelope import Envelope
from bridge.routing.router import Router
from bridge.runtime import Bridge
from bridge.testing import NatsServer, database_name, to_plain_url
from bridge.transport.delivery import Delivery
from services.shared.db import make_engine, migrate

RESTARTS = "bridge_consumer_task_restarts_total"
BATCH_ERRORS = "bridge_consumer_batch_errors_total"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Killer(BaseException):
    """Ends whatever task it reaches (fault injection)."""


async def scrape(bridge: Bridge) -> Samples:
    await bridge.metrics.refresh(force=True)
    text = (await bridge.metrics.render()).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, timeout: float = 15.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} not reached within {timeout}s")


MakeBridge = Callable[..., Awaitable[Bridge]]


@pytest.fixture
async def make_bridge(
    nats_server: NatsServer, database_url: str, unique: str
) -> AsyncIterator[MakeBridge]:
    await migrate(database_url)
    bridges: list[Bridge] = []

    async def make(router: Router | None = None, **overrides: Any) -> Bridge:
        config = configure_bidirectional(
            f"a{unique}", f"b{unique}", "non_restrictive", env={},
            nats_urls=(nats_server.url,), stream_name=f"s{unique}",
            backoff=(0.1, 0.2), **overrides,
        )  # fmt: skip
        engine = make_engine(database_url, pool_size=2)
        bridge = Bridge(config, engine=engine, router=router, dispose_engine=True)
        bridges.append(bridge)
        await bridge.start(timeout=10)
        return bridge

    yield make
    for bridge in bridges:
        await bridge.stop(timeout=5)


async def publish_as_peer(bridge: Bridge, nats_url: str, resource_id: str) -> None:
    config = bridge.config
    envelope = Envelope(event_type="widget.created", producer=config.destination_app,
                        resource_type="widget", resource_id=resource_id, payload={})  # fmt: skip
    nc = await nats.connect(nats_url)
    try:
        await nc.jetstream().publish(
            config.subjects.consume, envelope.to_bytes(), headers=envelope.headers()
        )
    finally:
        await nc.close()


async def allow_connections(url: str, allowed: bool) -> None:
    """Open or close a database to new connections (closing also ends the open ones)."""
    conn = await asyncpg.connect(to_plain_url(url).rsplit("/", 1)[0] + "/postgres")
    try:
        name = database_name(url)
        await conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS {str(allowed).lower()}')
        if not allowed:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
            )
    finally:
        await conn.close()


async def test_task_restarts_follow_a_real_restart_and_outlive_a_database_outage(
    make_bridge: MakeBridge, nats_server: NatsServer, database_url: str
) -> None:
    calls = 0

    async def handler(session: AsyncSession, envelope: Envelope) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise Killer("worker killed by its first delivery")

    router = Router()
    router.on("widget.created", handler)
    bridge = await make_bridge(router)
    before = await scrape(bridge)
    assert before.get((RESTARTS, ())) == 0, sorted(n for n, _ in before)
    assert before.get((BATCH_ERRORS, ())) == 0

    await publish_as_peer(bridge, nats_server.url, "1")

    async def restarted_and_applied() -> bool:
        return calls == 2 and (await scrape(bridge)).get((RESTARTS, ())) == 1

    await eventually(restarted_and_applied, "one restart, then the delivery applied")
    assert bridge.consumer is not None and bridge.consumer.stats().task_restarts == 1
    assert (await scrape(bridge)).get((BATCH_ERRORS, ())) == 0  # a death is not a batch error

    # Read without I/O: still there while the database-backed state is not.
    await allow_connections(database_url, False)
    try:
        down = await scrape(bridge)
    finally:
        await allow_connections(database_url, True)
    assert down.get(("bridge_metrics_source_up", (("source", "bridge"),))) == 0
    assert "bridge_inbox_records" not in {name for name, _ in down}
    assert down.get((RESTARTS, ())) == 1
    assert down.get(("bridge_metrics_source_up", (("source", "consumer"),))) == 1


class FailingOnce:
    """An observer that raises on the first batch (a bug in a batch's processing)."""

    def __init__(self, inner: BatchObserver | None) -> None:
        self.inner, self.failed = inner, False

    def consumer_batch(
        self, deliveries: Sequence[Delivery], outcomes: Sequence[str], seconds: float
    ) -> None:
        if not self.failed:
            self.failed = True
            raise RuntimeError("observer bug")
        if self.inner is not None:
            self.inner.consumer_batch(deliveries, outcomes, seconds)


async def test_batch_errors_follow_a_batch_that_raised(
    make_bridge: MakeBridge, nats_server: NatsServer
) -> None:
    applied: list[str] = []

    async def handler(session: AsyncSession, envelope: Envelope) -> None:
        applied.append(envelope.resource_id)

    router = Router()
    router.on("widget.created", handler)
    bridge = await make_bridge(router)
    assert bridge.consumer is not None
    bridge.consumer.observer = FailingOnce(bridge.consumer.observer)
    await publish_as_peer(bridge, nats_server.url, "1")

    async def counted() -> bool:
        return (await scrape(bridge)).get((BATCH_ERRORS, ())) == 1

    await eventually(counted, "one batch error")
    assert (await scrape(bridge)).get((RESTARTS, ())) == 0  # the loop went on
    await publish_as_peer(bridge, nats_server.url, "2")

    async def second_applied() -> bool:
        return "2" in applied

    await eventually(second_applied, "the next delivery applied")
    assert (await scrape(bridge)).get((BATCH_ERRORS, ())) == 1


async def test_a_process_without_a_consumer_exports_neither(make_bridge: MakeBridge) -> None:
    bridge = await make_bridge(enable_consumer=False)
    names = {name for name, _ in await scrape(bridge)}
    assert "bridge_relay_running" in names  # the scrape itself works
    assert RESTARTS not in names and BATCH_ERRORS not in names
