"""The operators' view of a service: what ``GET /metrics`` serves, and request tracing.

:func:`install_observability` adds :class:`bridge.integrations.asgi.TraceMiddleware` (every
request runs in a span continuing an incoming ``traceparent``, so the outbox rows
it writes carry the request's trace).  The ``/metrics`` route is among the operations
routes (:mod:`services.shared.status`).

:func:`service_metrics` builds what ``/metrics`` serves, kept in
``app.state.metrics`` by the lifespan: the bridge's own
:class:`~bridge.observability.metrics.BridgeMetrics` (its own registry — both systems run in one
test process without colliding) plus this domain's sync bookkeeping read at
scrape time (:class:`SyncTablesSource`).  With sync off there is no bridge: a
fresh ``BridgeMetrics`` whose bridge counters stay at 0 and the table counts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI
from opentelemetry.trace import TracerProvider
from prometheus_client.core import Metric
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bridge.integrations.asgi import TraceMiddleware
from bridge.observability.metrics import BridgeMetrics
from bridge.observability.sources import counter_family

if TYPE_CHECKING:
    from bridge import Bridge

_SYNC_TABLES = text(
    """
    SELECT (SELECT count(*) FROM sync_conflicts) AS conflicts,
           (SELECT count(*) FROM sync_stale_events) AS stale
    """
)


class SyncTablesSource:
    """``bridge_conflicts_total`` and ``bridge_stale_events_total`` from their tables.

    Both tables are append-only audit logs (one row per event, never updated), so
    their row counts are counters; deleting reviewed rows reads as a counter reset.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def read(self) -> list[Metric]:
        async with self._engine.connect() as conn:
            row = (await conn.execute(_SYNC_TABLES)).mappings().one()
        return [
            counter_family(
                "bridge_conflicts",
                "Natural-key conflicts recorded in sync_conflicts (each also dead-lettered).",
                row["conflicts"],
            ),
            counter_family(
                "bridge_stale_events",
                "Incoming changes older than the local version (sync_stale_events; acked).",
                row["stale"],
            ),
        ]


def service_metrics(engine: AsyncEngine, bridge: Bridge | None) -> BridgeMetrics:
    """The metrics ``/metrics`` serves: the bridge's, plus the sync tables' counts."""
    metrics = bridge.metrics if bridge is not None else BridgeMetrics()
    metrics.add_source("sync_tables", SyncTablesSource(engine))
    return metrics


def install_observability(app: FastAPI, *, tracer_provider: TracerProvider | None = None) -> None:
    """Add the tracing middleware to ``app``."""
    app.add_middleware(TraceMiddleware, tracer_provider=tracer_provider)
