"""BridgeMetrics' scrape-time sources and hooks, and /metrics of a service with sync off.

The source tests use fake sources (fault injection: a failing one, a slow one, a
counting one); the service test runs against a real, migrated PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from bridge.envelope import Envelope, format_timestamp
from bridge.observability.metrics import BridgeMetrics
from bridge.testing import PostgresServer
from services.shared.app import create_app
from services.shared.db import migrate
from services.shared.settings import ServiceSettings


def values(exposition: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(exposition.decode())
        for sample in family.samples
    }


class CountingSource:
    def __init__(self, name: str, delay: float = 0.0) -> None:
        self.name, self.delay, self.reads = name, delay, 0

    async def read(self) -> Iterable[Metric]:
        self.reads += 1
        await asyncio.sleep(self.delay)
        return [GaugeMetricFamily(self.name, "test gauge", value=self.reads)]


class FailingSource:
    async def read(self) -> Iterable[Metric]:
        raise OSError("database is down")


async def test_a_failing_or_slow_source_is_left_out_and_the_rest_is_served(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = BridgeMetrics(source_timeout=0.2)
    metrics.add_source("ok", CountingSource("ok_gauge"))
    metrics.add_source("down", FailingSource())
    metrics.add_source("slow", CountingSource("slow_gauge", delay=5.0))
    with caplog.at_level(logging.WARNING, logger="bridge.metrics"):
        scraped = values(await asyncio.wait_for(metrics.render(), 3.0))
    assert scraped[("ok_gauge", ())] == 1
    assert not any(name == "slow_gauge" for name, _ in scraped)
    assert scraped[("bridge_events_published_total", ())] == 0  # hook metrics always there
    failed = sorted(r.__dict__["source"] for r in caplog.records if hasattr(r, "source"))
    assert failed == ["down", "slow"]


async def test_sources_are_read_once_per_cache_window_even_by_concurrent_scrapes() -> None:
    metrics = BridgeMetrics(cache_seconds=30.0)
    source = CountingSource("reads", delay=0.05)
    metrics.add_source("counting", source)
    results = await asyncio.gather(*(metrics.render() for _ in range(5)))
    assert source.reads == 1
    assert {values(r)[("reads", ())] for r in results} == {1}
    await metrics.refresh(force=True)
    assert source.reads == 2
    assert values(await metrics.render())[("reads", ())] == 2  # cached: not read again
    assert source.reads == 2


@dataclass
class FakeReceived:
    data: bytes
    headers: dict[str, str] | None = None
    subject: str = "a.sync.b"
    stream: str = "s"
    stream_seq: int = 1
    num_delivered: int = 1


def test_lag_is_observed_for_acked_deliveries_only_and_never_negative() -> None:
    metrics = BridgeMetrics()
    past = format_timestamp(datetime.now(UTC) - timedelta(seconds=30))
    future = format_timestamp(datetime.now(UTC) + timedelta(seconds=30))  # skewed clock
    env = Envelope(event_type="x.created", producer="a", resource_type="x", resource_id="1",
                   payload={}, occurred_at=past)  # fmt: skip
    spaced = f'{{"occurred_at" : "{future}", "event_id": "e"}}'.encode()
    deliveries = [
        FakeReceived(env.to_bytes()),
        FakeReceived(spaced),
        FakeReceived(b"not json"),
        FakeReceived(env.to_bytes()),
    ]
    metrics.consumer_batch(deliveries, ["acked", "acked", "dead_lettered", "duplicate"], 0.01)
    registry = metrics.registry
    assert registry.get_sample_value("bridge_deliveries_total", {"outcome": "acked"}) == 2
    assert registry.get_sample_value("bridge_deliveries_total", {"outcome": "duplicate"}) == 1
    assert registry.get_sample_value("bridge_deliveries_total", {"outcome": "dead_lettered"}) == 1
    assert registry.get_sample_value("bridge_end_to_end_lag_seconds_count") == 2
    lag = registry.get_sample_value("bridge_end_to_end_lag_seconds_sum")
    assert lag is not None and 29 <= lag <= 60  # 30 s + 0 for the future timestamp


async def test_service_with_sync_off_serves_its_table_counts(postgres: PostgresServer) -> None:
    url = await postgres.create_database()
    try:
        await migrate(url)
        settings = ServiceSettings(
            app_name="solo",
            destination_app="peer",
            database_url=url,
            sync_enabled=False,
            id_system_number=3,
        )
        app = create_app(settings)
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(app.router.lifespan_context(app))
            client = await stack.enter_async_context(
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://solo")
            )
            async with app.state.service.engine.begin() as conn:
                await conn.execute(
                    text(
                        "INSERT INTO sync_stale_events (event_id, resource_type, resource_id, "
                        "incoming_updated_at, incoming_origin, local_updated_at, local_origin) "
                        "VALUES (gen_random_uuid(), 'organization', 42, now(), "
                        "'peer', now(), 'solo')"
                    )
                )
            response = await client.get("/metrics")
            assert response.status_code == 200
            scraped = values(response.content)
    finally:
        await postgres.drop_database(url)
    assert scraped[("bridge_stale_events_total", ())] == 1
    assert scraped[("bridge_conflicts_total", ())] == 0
    assert scraped[("bridge_events_published_total", ())] == 0
    assert not any(name == "bridge_outbox_pending" for name, _ in scraped)  # no bridge here


async def test_each_source_reports_whether_it_could_be_read() -> None:
    """``bridge_metrics_source_up{source}``: an alert can tell "0 pending rows" from
    "the database could not be read" (the gauges of a failed source are absent)."""
    metrics = BridgeMetrics(source_timeout=0.2)
    metrics.add_source("ok", CountingSource("ok_gauge"))
    metrics.add_source("down", FailingSource())
    scraped = values(await metrics.render())
    assert scraped[("bridge_metrics_source_up", (("source", "ok"),))] == 1
    assert scraped[("bridge_metrics_source_up", (("source", "down"),))] == 0
