"""Gauges read at scrape time: the :class:`~bridge.observability.metrics.MetricSource`
implementations of the bridge itself.

- :class:`BridgeStateSource`: outbox, inbox, dead letters and consumer lag, from
  :meth:`bridge.runtime.Bridge.status` (what ``/sync_status`` shows).
- :class:`RelayStateSource`: whether this process's relay runs, without I/O.
- :class:`ConsumerTasksSource`: the consumer's supervision counters, without I/O —
  ``bridge_consumer_task_restarts_total`` (receive, worker or in-progress tasks that
  died and were restarted, :mod:`bridge.consumer._supervisor`) and
  ``bridge_consumer_batch_errors_total`` (batches whose processing raised; their
  deliveries come back).  Read from the consumer's memory, they stay on ``/metrics``
  while the database or NATS is down (when the :class:`BridgeStateSource` gauges are
  absent), so a consumer that dies during an outage is still seen; they restart at 0
  with the consumer, which ``rate``/``increase`` treat as a counter reset.
- :func:`counter_family`: a counter whose value a source reads (e.g. a service's
  append-only audit tables).

A part the process does not run, or may not read, is left out of the scrape rather
than reported as 0 (a missing series, not a false zero).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from bridge.schema import INBOX_DEAD_LETTERED, INBOX_FAILED, INBOX_PROCESSED


class BridgeStateSource:
    """Gauges from :meth:`bridge.runtime.Bridge.status` (outbox, inbox, DLQ, consumer).

    Parts the process does not run (relay or consumer off) or may not read (no
    stream-info permission in restrictive mode) are left out, not reported as 0.
    """

    def __init__(self, status: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        self._status = status

    async def read(self) -> list[Metric]:
        status = await self._status()
        out: list[Metric] = [
            _gauge(
                "bridge_jetstream_connected",
                "1 while the NATS connection is up.",
                1.0 if status.get("jetstream_connected") else 0.0,
            )
        ]
        outbox = status.get("outbox")
        if outbox is not None:
            out += [
                _gauge("bridge_outbox_pending", "Outbox rows waiting to be published.",
                       outbox["pending"]),
                _gauge("bridge_outbox_retrying",
                       "Pending outbox rows that failed at least once and wait for a retry.",
                       outbox["retried"]),
                _gauge("bridge_outbox_failed",
                       "Outbox rows that failed max_attempts times (need requeue).",
                       outbox["failed"]),
            ]  # fmt: skip
            age = outbox.get("oldest_pending_age_seconds")
            out.append(
                _gauge(
                    "bridge_outbox_oldest_pending_age_seconds",
                    "Age of the oldest pending outbox row (0 when none is pending).",
                    float(age) if age is not None else 0.0,
                )
            )
        inbox = status.get("inbox")
        if inbox is not None:
            family = GaugeMetricFamily(
                "bridge_inbox_records", "Inbox records by status.", labels=["status"]
            )
            for label, key in (
                (INBOX_PROCESSED, "processed"),
                (INBOX_FAILED, "failed"),
                (INBOX_DEAD_LETTERED, "dead_lettered"),
            ):
                family.add_metric([label], float(inbox[key]))
            out.append(family)
        dead_letters = status.get("dead_letters")
        if dead_letters is not None:
            out.append(
                _gauge(
                    "bridge_dead_letters",
                    "Messages on this app's dead-letter subject in the stream.",
                    dead_letters,
                )
            )
        oldest = status.get("dead_letters_oldest_age_seconds")
        if oldest is not None:
            out.append(
                _gauge(
                    "bridge_dead_letters_oldest_age_seconds",
                    "Seconds the oldest unhandled dead letter of this app has waited "
                    "(0 when there is none); dead letters stay until replayed or purged.",
                    oldest,
                )
            )
        consumer = status.get("consumer") or {}
        for key, name, doc in (
            ("num_pending", "bridge_consumer_pending", "Messages not yet delivered."),
            ("num_ack_pending", "bridge_consumer_ack_pending", "Deliveries awaiting an ack."),
        ):
            if consumer.get(key) is not None:
                out.append(_gauge(name, doc, consumer[key]))
        return out


class RelayStateSource:
    """``bridge_relay_running`` (1 while this process's relay runs, else 0), without I/O:
    where no process runs a relay the outbox gauges are absent, this one is not."""

    def __init__(self, running: Callable[[], bool]) -> None:
        self._running = running

    async def read(self) -> list[Metric]:
        return [
            _gauge(
                "bridge_relay_running",
                "1 while this process's outbox relay runs, else 0 (off, not started, stopped).",
                1.0 if self._running() else 0.0,
            )
        ]


class SupervisionCounts(Protocol):
    """What :class:`ConsumerTasksSource` reads (:class:`bridge.consumer.base.ConsumerStats`)."""

    @property
    def task_restarts(self) -> int: ...

    @property
    def batch_errors(self) -> int: ...


class ConsumerTasksSource:
    """The consumer's ``task_restarts`` and ``batch_errors`` as counters (module doc).

    ``stats`` returns the running consumer's stats, or ``None`` where the process
    runs no consumer; it must not do I/O (``BaseConsumer.stats`` does none).
    """

    def __init__(self, stats: Callable[[], SupervisionCounts | None]) -> None:
        self._stats = stats

    async def read(self) -> list[Metric]:
        stats = self._stats()
        if stats is None:
            return []
        return [
            counter_family(
                "bridge_consumer_task_restarts",
                "Consumer tasks (receive, worker, in-progress) that died and were restarted.",
                stats.task_restarts,
            ),
            counter_family(
                "bridge_consumer_batch_errors",
                "Consumer batches whose processing raised (their deliveries are redelivered).",
                stats.batch_errors,
            ),
        ]


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))


def counter_family(name: str, documentation: str, value: float) -> CounterMetricFamily:
    """A counter read from a source (exposed as ``<name>_total``)."""
    return CounterMetricFamily(name, documentation, value=float(value))
