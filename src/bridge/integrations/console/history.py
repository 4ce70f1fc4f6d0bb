"""The console's charts over the last hour: samples taken every ``sample_interval``,
kept in memory.

:class:`Sampler` (``start()``/``stop(timeout)``, owns one task) takes a
:class:`Sample` at once and then every interval, into a :class:`History` ring
buffer of ``history / sample_interval`` samples (older ones fall out):

- **Throughput** — outbox rows sent and inbox records processed per second, counted
  in the app's database over the window since the previous sample, so they cover
  every process of the app (web and workers), not only this one.  The window ends
  :data:`SETTLE` seconds in the past: a row stamped just before a sample but
  committed just after it is counted in the next window, not lost.
- **End-to-end lag** — the 50th, 95th and 99th percentile of
  ``bridge_end_to_end_lag_seconds`` (occurred_at to ack) over the window, from this
  process's histogram (:class:`~bridge.observability.metrics.BridgeMetrics`), so only
  where this process runs a consumer; ``None`` elsewhere and in windows without acks.
- **Backlog** — pending outbox rows (database), the durable's undelivered messages
  and the dead letters stored (JetStream; ``None`` where this NATS user may not read
  them).

A part that cannot be read (database or NATS down) is ``None`` in that sample and
logged; the sampler goes on.  Nothing survives a restart: the charts fill again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import text

from bridge.outbox.admin import outbox_counts

if TYPE_CHECKING:
    from bridge.runtime import Bridge

log = logging.getLogger("bridge.console")

#: Seconds a throughput window ends before the sample: rows stamped in a transaction
#: that commits this long after its ``now()`` are still counted.
SETTLE = 2.0
#: Seconds one sample may take in all before its missing parts are ``None``.
SAMPLE_TIMEOUT = 5.0
QUANTILES = (0.5, 0.95, 0.99)
LAG_METRIC = "bridge_end_to_end_lag_seconds"

_UPTO = text("SELECT extract(epoch FROM now() - make_interval(secs => :settle)) AS upto")
_WINDOW = text(
    """
    SELECT extract(epoch FROM now() - make_interval(secs => :settle)) AS upto,
           (SELECT count(*) FROM bridge_outbox
             WHERE status = 'sent' AND sent_at > to_timestamp(:since)
               AND sent_at <= now() - make_interval(secs => :settle)) AS published,
           (SELECT count(*) FROM bridge_inbox
             WHERE status = 'processed' AND processed_at > to_timestamp(:since)
               AND processed_at <= now() - make_interval(secs => :settle)) AS delivered
    """
)


@dataclass(frozen=True, slots=True)
class Sample:
    """One point of every chart; ``None``: not known at that time (module doc)."""

    at: float
    published_per_second: float | None = None
    delivered_per_second: float | None = None
    lag_p50: float | None = None
    lag_p95: float | None = None
    lag_p99: float | None = None
    outbox_pending: float | None = None
    consumer_pending: float | None = None
    dead_letters: float | None = None


class History:
    """The last ``capacity`` samples, oldest first."""

    def __init__(self, capacity: int) -> None:
        self._samples: deque[Sample] = deque(maxlen=capacity)

    def add(self, sample: Sample) -> None:
        self._samples.append(sample)

    def samples(self) -> list[Sample]:
        return list(self._samples)

    def series(self, field: str) -> list[tuple[float, float | None]]:
        """``(at, value)`` of one :class:`Sample` field, oldest first."""
        return [(s.at, getattr(s, field)) for s in self._samples]

    def __len__(self) -> int:
        return len(self._samples)


Buckets = tuple[tuple[float, float], ...]


def histogram_buckets(metric_families: Iterable[Any]) -> Buckets:
    """Cumulative ``(upper bound, count)`` pairs of a histogram's ``_bucket`` samples."""
    pairs: list[tuple[float, float]] = []
    for family in metric_families:
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                pairs.append((float(sample.labels["le"]), float(sample.value)))
    return tuple(sorted(pairs))


def quantile(q: float, before: Buckets, after: Buckets) -> float | None:
    """The ``q`` quantile of what was observed between two readings of one histogram,
    interpolated linearly inside its bucket (as PromQL's ``histogram_quantile``);
    ``None`` when nothing was observed.  A quantile in the ``+Inf`` bucket is the
    highest finite bound."""
    earlier = dict(before)
    deltas = [(le, count - earlier.get(le, 0.0)) for le, count in after]
    if not deltas or deltas[-1][1] <= 0:
        return None
    rank = q * deltas[-1][1]
    lower, below = 0.0, 0.0
    for le, cumulative in deltas:
        if cumulative >= rank:
            if le == float("inf"):
                return lower
            inside = cumulative - below
            fraction = (rank - below) / inside if inside > 0 else 1.0
            return lower + (le - lower) * fraction
        lower, below = le, cumulative
    return lower


class Sampler:
    """Takes a :class:`Sample` of ``bridge`` now and every ``interval`` (module doc)."""

    def __init__(self, bridge: Bridge, history: History, interval: float) -> None:
        self._bridge = bridge
        self._history = history
        self._interval = interval
        self._since: float | None = None
        self._lag: Buckets = ()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None

    async def start(self) -> None:
        """Start sampling (the first sample is taken at once); idempotent."""
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.create_task(self._loop(), name="bridge-console-sampler")

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop; a sample in progress gets ``timeout`` seconds, then is cancelled."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                self._history.add(await self.sample())
            except Exception as exc:  # a chart must never stop the sampler
                log.warning("console sample failed", extra={"error": repr(exc)})
            wait = max(self._interval - (time.monotonic() - started), 0.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), wait)

    async def sample(self) -> Sample:
        """Read every part once (each ``None`` where it fails) and return the sample."""
        now = time.time()
        window, pending, lag, dead = await asyncio.gather(
            self._window(),
            self._outbox_pending(),
            self._bridge.observed.consumer_lag(),
            self._bridge.observed.dead_letter_count(),
            return_exceptions=True,
        )
        for part, result in (("database", window), ("outbox", pending), ("consumer", lag),
                             ("dead_letters", dead)):  # fmt: skip
            if isinstance(result, BaseException):
                log.warning("console sample: part unreadable",
                            extra={"part": part, "error": repr(result)})  # fmt: skip
        published = delivered = None
        if isinstance(window, tuple):
            published, delivered = window
        quantiles = self._lag_quantiles()
        consumer_pending = lag.get("num_pending") if isinstance(lag, dict) else None
        return Sample(
            at=now,
            published_per_second=published,
            delivered_per_second=delivered,
            lag_p50=quantiles[0],
            lag_p95=quantiles[1],
            lag_p99=quantiles[2],
            outbox_pending=pending if isinstance(pending, int) else None,
            consumer_pending=float(consumer_pending) if consumer_pending is not None else None,
            dead_letters=float(dead) if isinstance(dead, int) else None,
        )

    async def _window(self) -> tuple[float, float] | None:
        """Rows sent and records processed per second since the previous window."""
        since = self._since
        # the first window only sets where the next one starts
        query, params = (
            (_UPTO, {"settle": SETTLE})
            if since is None
            else (_WINDOW, {"settle": SETTLE, "since": since})
        )
        async with asyncio.timeout(SAMPLE_TIMEOUT), self._bridge.engine.connect() as conn:
            result = await conn.execute(query, params)
            row = result.mappings().one()
        upto = float(row["upto"])
        self._since = upto
        if since is None or upto <= since:
            return None
        seconds = upto - since
        return int(row["published"]) / seconds, int(row["delivered"]) / seconds

    async def _outbox_pending(self) -> int:
        async with asyncio.timeout(SAMPLE_TIMEOUT):
            return (await outbox_counts(self._bridge.engine)).pending

    def _lag_quantiles(self) -> Sequence[float | None]:
        if self._bridge.consumer is None:
            self._lag = ()
            return (None,) * len(QUANTILES)
        current = histogram_buckets(self._bridge.metrics.lag.collect())
        before, self._lag = self._lag, current
        if not before:
            return (None,) * len(QUANTILES)
        return tuple(quantile(q, before, current) for q in QUANTILES)
