"""Prometheus metrics of one :class:`~bridge.runtime.Bridge`, in its own registry.

Every :class:`BridgeMetrics` owns a :class:`~prometheus_client.CollectorRegistry`
(never the process-wide default one), so several bridges — e.g. System A and
System B in one test process — never collide.  Two kinds of metric:

- **Counters and histograms** updated by hooks as things happen (real,
  monotonic counters for the life of the ``BridgeMetrics``):
  :meth:`relay_batch` (the relay, after each published batch),
  :meth:`consumer_batch` (the consumer, after each processed batch, acks done),
  :meth:`handler_done` (:class:`MetricsMiddleware`, after each handler call),
  :meth:`event_upcast` / :meth:`event_unsupported` (the inbox, once per delivery
  of a versioned type, :mod:`bridge.event_schemas`).
  :meth:`reconcile_done` (:class:`~bridge.reconcile.reconciler.Reconciler`, after each pass).
  :meth:`reconcile_request` (:class:`~bridge.reconcile.responder.ReconcileResponder`,
  after answering each peer request, served or refused).
- **Gauges read at scrape time** from *sources* (:class:`MetricSource`: the
  bridge's database and NATS state, :mod:`bridge.observability.sources`; a
  service's own tables).  Prometheus'
  ``collect()`` is synchronous and queries are not, so :meth:`refresh` reads the
  sources (at most once per ``cache_seconds``, each bounded by ``source_timeout``;
  concurrent scrapes share one read) and ``collect()`` serves that snapshot.
  :meth:`render` does both: what a ``/metrics`` endpoint returns.  A source that
  fails is logged and its metrics are left out of that scrape (no stale values),
  and ``bridge_metrics_source_up{source}`` says so (1 read, 0 failed).

Metric names and labels are listed in docs/OPERATIONS.md ("Metrics and tracing").
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterable, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from bridge.envelope import Envelope, parse_timestamp
from bridge.errors import EnvelopeError
from bridge.reconcile._protocol import REFUSALS
from bridge.reconcile.repair import ReconcileReport
from bridge.routing.middleware import HandlerCall, Next
from bridge.transport.delivery import Outcome, Received

log = logging.getLogger("bridge.metrics")

CONTENT_TYPE = CONTENT_TYPE_LATEST

BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
HANDLER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
LAG_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0
)  # fmt: skip

# A regex finds the timestamp without decoding the whole body a second time (the
# inbox already did); JSON whitespace around the colon is allowed.
_OCCURRED_AT = re.compile(rb'"occurred_at"\s*:\s*"([^"]{1,64})"')


class MetricSource(Protocol):
    """Something whose metrics are read at scrape time (database counts, NATS state)."""

    async def read(self) -> Iterable[Metric]: ...


class BridgeMetrics:
    """The metrics of one bridge (module doc).  Give each Bridge its own instance."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        cache_seconds: float = 1.0,
        source_timeout: float = 2.0,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._cache_seconds = cache_seconds
        self._source_timeout = source_timeout
        self._sources: list[tuple[str, MetricSource]] = []
        self._snapshot: list[Metric] = []
        self._read_at: float | None = None
        self._refresh_lock = asyncio.Lock()
        r = self.registry
        self.published = Counter(
            "bridge_events_published", "Outbox rows published (PubAck received).", registry=r
        )
        self.publish_failures = Counter(
            "bridge_publish_failures",
            "Failed publish attempts of outbox rows (each retried with backoff or failed).",
            registry=r,
        )
        self.publish_duplicates = Counter(
            "bridge_publish_duplicates",
            "Publishes the server reported as duplicates (Nats-Msg-Id seen in its window).",
            registry=r,
        )
        self.batch_duration = Histogram(
            "bridge_relay_batch_duration_seconds",
            "Time to publish one claimed outbox batch and record the outcome.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.deliveries = Counter(
            "bridge_deliveries",
            "Deliveries processed by the consumer, by outcome.",
            ["outcome"],
            registry=r,
        )
        for outcome in Outcome:  # every series exists from the start, at 0
            self.deliveries.labels(outcome=str(outcome))
        self.handler_duration = Histogram(
            "bridge_handler_duration_seconds",
            "Time of one handler call (per event, inside the inbox transaction).",
            ["event_type", "result"],
            buckets=HANDLER_BUCKETS,
            registry=r,
        )
        self.lag = Histogram(
            "bridge_end_to_end_lag_seconds",
            "From the event's occurred_at (producer clock) to its ack after processing.",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.upcasts = Counter(
            "bridge_event_upcasts",
            "Upcaster steps run on consumed events, by event type and the version upcast from.",
            ["event_type", "from_version"],
            registry=r,
        )
        self.unsupported_versions = Counter(
            "bridge_unsupported_schema_versions",
            "Consumed events dead-lettered because their schema_version is unknown here.",
            ["event_type", "version"],
            registry=r,
        )
        self.reconcile_runs = Counter(
            "bridge_reconcile_runs",
            "Reconciliation passes run by this process, by result.",
            ["result"],
            registry=r,
        )
        self.reconcile_repaired = Counter(
            "bridge_reconcile_rows_repaired",
            "Rows re-emitted by reconciliation, by direction (to_peer: this app re-emitted).",
            ["direction"],
            registry=r,
        )
        self.reconcile_bytes = Counter(
            "bridge_reconcile_bytes",
            "Request and reply bytes of reconciliation passes (both directions).",
            registry=r,
        )
        self.reconcile_last_run = Gauge(
            "bridge_reconcile_last_run_timestamp_seconds",
            "Unix time the last reconciliation pass of this process finished.",
            registry=r,
        )
        for result in ("ok", "error"):
            self.reconcile_runs.labels(result=result)
        for direction in ("to_peer", "from_peer"):
            self.reconcile_repaired.labels(direction=direction)
        self.reconcile_requests = Counter(
            "bridge_reconcile_requests",
            "Peer reconciliation requests answered by this process's responder, by result "
            "(ok, or the refusal code: bad_request, too_large, unknown_resource, busy, "
            "timeout, internal).",
            ["result"],
            registry=r,
        )
        for result in ("ok", *REFUSALS):
            self.reconcile_requests.labels(result=result)
        r.register(_SnapshotCollector(self))

    # -- hooks (synchronous, cheap, never raise into the caller) ------------------
    def relay_batch(
        self, *, published: int, failures: int, duplicates: int, seconds: float
    ) -> None:
        """The relay published one claimed batch (:class:`~bridge.outbox.relay.OutboxRelay`)."""
        self.published.inc(published)
        self.publish_failures.inc(failures)
        self.publish_duplicates.inc(duplicates)
        self.batch_duration.observe(seconds)

    def consumer_batch(
        self, deliveries: Sequence[Received], outcomes: Sequence[str], seconds: float
    ) -> None:
        """The consumer processed ``deliveries`` (outcomes in the same order), acks sent."""
        now = time.time()
        for delivery, outcome in zip(deliveries, outcomes, strict=False):
            self.deliveries.labels(outcome=str(outcome)).inc()
            if outcome == Outcome.ACKED:
                occurred = _occurred_at(delivery.data)
                if occurred is not None:
                    # Producer and consumer clocks differ; never report a negative lag.
                    self.lag.observe(max(0.0, now - occurred))

    def handler_done(self, envelope: Envelope, seconds: float, error: BaseException | None) -> None:
        """One handler call finished (``error`` is what it raised, if anything)."""
        self.handler_duration.labels(
            event_type=envelope.event_type, result="success" if error is None else "error"
        ).observe(seconds)

    def event_upcast(self, event_type: str, from_version: int) -> None:
        """One upcaster step ran (``from_version`` → ``from_version + 1``)."""
        self.upcasts.labels(event_type=event_type, from_version=str(from_version)).inc()

    def event_unsupported(self, event_type: str, version: int) -> None:
        """A delivery's ``schema_version`` is one this consumer does not accept."""
        self.unsupported_versions.labels(event_type=event_type, version=str(version)).inc()

    def reconcile_done(self, report: ReconcileReport) -> None:
        """A reconciliation pass finished (:class:`~bridge.reconcile.reconciler.Reconciler`)."""
        self.reconcile_runs.labels(result="ok" if report.error is None else "error").inc()
        self.reconcile_repaired.labels(direction="to_peer").inc(report.repaired_to_peer)
        self.reconcile_repaired.labels(direction="from_peer").inc(report.repaired_from_peer)
        self.reconcile_bytes.inc(report.bytes_transferred)
        self.reconcile_last_run.set(report.finished_at.timestamp())

    def reconcile_request(self, result: str) -> None:
        """The responder answered one peer request: ``ok`` or a refusal code."""
        self.reconcile_requests.labels(result=result).inc()

    # -- scrape-time sources ----------------------------------------------------------
    def add_source(self, name: str, source: MetricSource) -> None:
        """Read ``source`` on each :meth:`refresh` (``name`` appears in logs only)."""
        self._sources.append((name, source))

    async def refresh(self, *, force: bool = False) -> None:
        """Read every source unless the snapshot is younger than ``cache_seconds``."""
        async with self._refresh_lock:
            fresh = (
                self._read_at is not None and time.monotonic() - self._read_at < self._cache_seconds
            )
            if fresh and not force:
                return
            metrics: list[Metric] = []
            up = GaugeMetricFamily(
                "bridge_metrics_source_up",
                "1 if the source could be read at the last scrape, else 0 (metrics absent).",
                labels=["source"],
            )
            for name, source in self._sources:
                try:
                    async with asyncio.timeout(self._source_timeout):
                        metrics.extend(await source.read())
                    up.add_metric([name], 1.0)
                except Exception as exc:  # a scrape must not fail because one part is down
                    up.add_metric([name], 0.0)
                    log.warning(
                        "metrics source failed; its metrics are left out of this scrape",
                        extra={"source": name, "error": repr(exc)},
                    )
            metrics.append(up)
            self._snapshot = metrics
            self._read_at = time.monotonic()

    async def render(self) -> bytes:
        """The Prometheus text exposition, sources refreshed (see :data:`CONTENT_TYPE`)."""
        await self.refresh()
        return generate_latest(self.registry)

    def snapshot(self) -> list[Metric]:
        return list(self._snapshot)


class MetricsMiddleware:
    """Handler middleware (:mod:`bridge.routing.middleware`): times every handler call
    into ``bridge_handler_duration_seconds`` (:meth:`BridgeMetrics.handler_done`).

    A call, not a delivery: a batch re-run on the inbox's savepoint path calls a
    handler again.  A batch handler's call reports each of its envelopes with an
    equal share of the call's time (the per-event cost) and the call's error.
    """

    def __init__(self, metrics: BridgeMetrics) -> None:
        self._metrics = metrics

    async def __call__(self, call: HandlerCall, call_next: Next) -> None:
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            await call_next()
        except BaseException as exc:
            error = exc
            raise
        finally:
            if call.envelopes:
                share = (time.perf_counter() - started) / len(call.envelopes)
                for envelope in call.envelopes:
                    self._metrics.handler_done(envelope, share, error)


class _SnapshotCollector:
    """Serves the metrics of the last :meth:`BridgeMetrics.refresh` to the registry."""

    def __init__(self, metrics: BridgeMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        # Names vary with what the sources can read; nothing to check at register time.
        return []

    def collect(self) -> Iterable[Metric]:
        return self._metrics.snapshot()


def _occurred_at(data: bytes) -> float | None:
    """Epoch seconds of the body's ``occurred_at``, or ``None`` if it cannot be read."""
    match = _OCCURRED_AT.search(data)
    if match is None:
        return None
    try:
        return parse_timestamp(match.group(1).decode()).timestamp()
    except (EnvelopeError, UnicodeDecodeError):
        return None
