"""The consumer's supervision counters on ``/metrics``, read at scrape time without I/O.

:class:`~bridge.consumer_base.BaseConsumer` counts what its supervision saw
(``ConsumerStats``): ``task_restarts`` — receive, worker or in-progress tasks that
died and were restarted (:mod:`bridge.supervisor`) — and ``batch_errors`` — batches
whose processing raised (logged with the traceback; their deliveries come back).
:class:`ConsumerTasksSource` exports them as counters:

- ``bridge_consumer_task_restarts_total``
- ``bridge_consumer_batch_errors_total``

They are read from the consumer's memory, never from the database or NATS, so
they stay on ``/metrics`` while those are down (the :class:`~bridge.metrics.
BridgeStateSource` gauges are then absent): a consumer that dies during an outage
is still seen.  Where the process runs no consumer (``enable_consumer=False``, not
started, stopped by :meth:`Bridge.stop <bridge.runtime.Bridge.stop>`) both are
absent, like the other gauges of parts a process does not run.  They restart at 0
with the consumer (a new process, or a Bridge started again), which Prometheus'
``rate``/``increase`` treat as a counter reset.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from prometheus_client.core import Metric

from bridge.metrics import counter_family

__all__ = ["ConsumerTasksSource", "SupervisionCounts"]


class SupervisionCounts(Protocol):
    """What :class:`ConsumerTasksSource` reads (``bridge.consumer_base.ConsumerStats``)."""

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
