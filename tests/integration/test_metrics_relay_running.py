"""``bridge_relay_running``: whether this process's relay publishes outbox rows.

A backlog alert cannot see a relay that is not running where every process has
it switched off or stopped: the outbox gauges are absent there.  This gauge is
1 while the process's relay runs and 0 otherwise, read at scrape time without
touching the database.  Real NATS and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.env import configure_bidirectional
from bridge.runtime import Bridge
from bridge.testing import NatsServer
from services.shared.db import make_engine, migrate


async def relay_running(bridge: Bridge) -> float | None:
    await bridge.metrics.refresh(force=True)
    text = (await bridge.metrics.render()).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "bridge_relay_running":
                return sample.value
    return None


@pytest.fixture
async def make_bridge(
    nats_server: NatsServer, database_url: str, unique: str
) -> AsyncIterator[object]:
    await migrate(database_url)
    bridges: list[Bridge] = []

    async def make(**overrides: object) -> Bridge:
        config = configure_bidirectional(
            f"a{unique}", f"b{unique}", "non_restrictive", env={},
            nats_urls=(nats_server.url,), stream_name=f"s{unique}", **overrides,
        )  # fmt: skip
        bridge = Bridge(config, engine=make_engine(database_url, pool_size=2), dispose_engine=True)
        bridges.append(bridge)
        await bridge.start(timeout=10)
        return bridge

    yield make
    for bridge in bridges:
        await bridge.stop(timeout=5)


async def test_relay_running_follows_the_relay(make_bridge) -> None:  # type: ignore[no-untyped-def]
    bridge = await make_bridge()
    assert await relay_running(bridge) == 1
    assert bridge.relay is not None
    await bridge.relay.stop(timeout=5)
    assert await relay_running(bridge) == 0


async def test_relay_switched_off_reports_zero(make_bridge) -> None:  # type: ignore[no-untyped-def]
    bridge = await make_bridge(enable_relay=False, enable_consumer=False)
    assert await relay_running(bridge) == 0
