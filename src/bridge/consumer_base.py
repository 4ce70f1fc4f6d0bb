"""What pull and push consumers share: workers, ordering, in-progress, stop, stats.

A consumer receives batches of deliveries (pull: ``fetch``; push: the deliver
subject) and hands them to :class:`~bridge.inbox.InboxProcessor`, which decides
ack / NAK / dead letter.  This module owns everything around that:

- **Workers and order**: ``config.consumer.concurrency`` workers, each with a
  small bounded queue.  Every delivery of one resource (``resource_type`` +
  ``resource_id``) goes to the same worker (stable CRC32 hash), so per-resource
  order holds while different resources are applied in parallel.  The bounded
  queues give back-pressure: nothing more is received while workers are busy.
- **Long handlers**: every in-flight delivery older than the in-progress
  interval (``consumer.in_progress_interval`` or ``ack_wait / 2``) gets
  ``in_progress()`` each interval, so the server does not redeliver it while it
  waits in a queue or while its batch is being applied.
- **Never dies**: receive errors (NATS restart, missing consumer) are logged and
  retried after a short, growing pause; a failing batch is logged and the loop
  goes on (its deliveries are NAKed or time out and are redelivered).
- **stop(timeout)**: stop receiving, let the workers finish and acknowledge what
  they hold, flush the acks; whatever is still un-acked when ``timeout`` runs
  out is abandoned (its transaction rolls back) and redelivered by the server.
- **Observer** (optional, e.g. :class:`bridge.metrics.BridgeMetrics`): told about
  every processed batch after its acks were sent, with the outcomes and the time
  ``process_batch`` took.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from bridge.config import BridgeConfig
from bridge.connection import Connection
from bridge.delivery import Delivery, Outcome, partition_key
from bridge.dlq import MaxDeliveriesWatcher
from bridge.inbox import InboxProcessor

log = logging.getLogger("bridge.consumer")

RECEIVE_RETRY_MIN = 0.1
RECEIVE_RETRY_MAX = 2.0


@dataclass(frozen=True, slots=True)
class ConsumerStats:
    """A snapshot of one consumer (for ``/sync_status`` and tests)."""

    mode: str
    running: bool
    outcomes: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    last_delivery_at: float | None = None  # epoch seconds of the last received delivery
    redeliveries: int = 0  # received deliveries with num_delivered > 1
    batches: int = 0
    receive_errors: int = 0

    @property
    def processed(self) -> int:
        return self.outcomes.get(Outcome.ACKED, 0)


class BatchObserver(Protocol):
    """Told about each processed batch (acks sent); must be cheap and must not raise."""

    def consumer_batch(
        self, deliveries: Sequence[Delivery], outcomes: Sequence[str], seconds: float
    ) -> None: ...


class BaseConsumer:
    """Receive loop + workers; subclasses implement ``_open``, ``_receive``, ``_close``."""

    mode = "base"

    def __init__(
        self,
        config: BridgeConfig,
        connection: Connection,
        processor: InboxProcessor,
        *,
        watch_max_deliveries: bool | None = None,
        observer: BatchObserver | None = None,
    ) -> None:
        """``watch_max_deliveries`` (default: ``config.auto_provision``) starts a
        :class:`~bridge.dlq.MaxDeliveriesWatcher`, a safety net for consumers still
        provisioned with a finite server-side ``max_deliver``; restrictive apps lack
        the permission to read advisories and messages by sequence and do not need
        it: a delivery after the last attempt is dead-lettered by the inbox (the
        reserved delivery, :func:`bridge.router.decide_exhausted`) in every mode.
        ``observer`` (also settable before :meth:`start`) sees every processed batch."""
        self.observer = observer
        self._config = config
        self._connection = connection
        self._processor = processor
        opts = config.consumer
        self._concurrency = opts.concurrency
        self._batch_size = opts.batch_size
        self._progress_every = opts.in_progress_interval or config.ack_wait / 2
        self._watch = (
            config.auto_provision if watch_max_deliveries is None else watch_max_deliveries
        )
        self._watcher: MaxDeliveriesWatcher | None = None
        self._queues: list[asyncio.Queue[list[Delivery] | None]] = []
        self._workers: list[asyncio.Task[None]] = []
        self._loop_task: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._in_flight: dict[int, tuple[Delivery, float]] = {}
        self._outcomes: Counter[str] = Counter()
        self._last_delivery_at: float | None = None
        self._redeliveries = 0
        self._batches = 0
        self._receive_errors = 0

    # -- lifecycle ----------------------------------------------------------------
    async def start(self) -> None:
        """Subscribe and start the receive loop, the workers and the in-progress ticker."""
        if self._loop_task is not None:
            return
        self._stopping.clear()
        await self._open()
        self._queues = [asyncio.Queue(maxsize=1) for _ in range(self._concurrency)]
        self._workers = [
            asyncio.create_task(self._work(q), name=f"bridge-{self.mode}-worker-{i}")
            for i, q in enumerate(self._queues)
        ]
        self._ticker = asyncio.create_task(self._tick(), name=f"bridge-{self.mode}-progress")
        self._loop_task = asyncio.create_task(self._run(), name=f"bridge-{self.mode}-receive")
        dead_letters = self._processor.dead_letters
        if self._watch and dead_letters is not None:
            self._watcher = MaxDeliveriesWatcher(
                self._config, self._connection.nc, dead_letters, self._processor
            )
            await self._watcher.start()
        log.info(
            "consumer started",
            extra={
                "mode": self.mode,
                "durable": self._config.subjects.durable,
                "concurrency": self._concurrency,
                "batch_size": self._batch_size,
            },
        )

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop receiving, finish and ack in-flight deliveries within ``timeout``.

        Deliveries not acknowledged by then are left to the server, which
        redelivers them after ``ack_wait`` (the inbox makes that safe).
        """
        if self._loop_task is None:
            return
        deadline = time.monotonic() + timeout
        self._stopping.set()
        await self._close_intake()
        loop_task, self._loop_task = self._loop_task, None
        await _finish(loop_task, deadline)
        for queue in self._queues:
            try:
                queue.put_nowait(None)
            except asyncio.QueueFull:  # a batch is still waiting for this worker
                await _put_before(queue, None, deadline)
        for worker in self._workers:
            await _finish(worker, deadline)
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self._watcher is not None:
            await self._watcher.stop(max(deadline - time.monotonic(), 0.1))
        self._workers, self._queues, self._ticker, self._watcher = [], [], None, None
        await self._close()
        with contextlib.suppress(Exception):  # acks were written; push them out now
            await self._connection.nc.flush(timeout=max(1, round(deadline - time.monotonic())))
        log.info("consumer stopped", extra={"mode": self.mode, "unacked": len(self._in_flight)})
        self._in_flight.clear()

    def stats(self) -> ConsumerStats:
        return ConsumerStats(
            mode=self.mode,
            running=self._loop_task is not None and not self._loop_task.done(),
            outcomes={str(k): v for k, v in self._outcomes.items()},
            in_flight=len(self._in_flight),
            last_delivery_at=self._last_delivery_at,
            redeliveries=self._redeliveries,
            batches=self._batches,
            receive_errors=self._receive_errors,
        )

    # -- subclass hooks -----------------------------------------------------------
    async def _open(self) -> None:
        raise NotImplementedError

    async def _receive(self) -> Sequence[Delivery]:
        """Up to ``batch_size`` deliveries, waiting at most about ``fetch_timeout``."""
        raise NotImplementedError

    async def _close_intake(self) -> None:
        """Stop new deliveries arriving (push: unsubscribe); called first in stop()."""

    def _has_received(self) -> bool:
        """Deliveries received but not handed out yet; the loop drains them on stop."""
        return False

    async def _close(self) -> None:
        """Release subscriptions; called last in stop()."""

    # -- internals ----------------------------------------------------------------
    async def _run(self) -> None:
        pause = RECEIVE_RETRY_MIN
        while not self._stopping.is_set() or self._has_received():
            try:
                deliveries = await self._receive()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._receive_errors += 1
                log.warning(
                    "receive failed; retrying",
                    extra={"mode": self.mode, "error": repr(exc), "pause": pause},
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), pause)
                pause = min(pause * 2, RECEIVE_RETRY_MAX)
                continue
            pause = RECEIVE_RETRY_MIN
            if deliveries:
                await self._dispatch(deliveries)

    async def _dispatch(self, deliveries: Sequence[Delivery]) -> None:
        now = time.monotonic()
        self._last_delivery_at = time.time()
        for delivery in deliveries:
            self._in_flight[id(delivery)] = (delivery, now)
            if delivery.num_delivered > 1:
                self._redeliveries += 1
        if self._concurrency == 1:
            await self._queues[0].put(list(deliveries))
            return
        groups: list[list[Delivery]] = [[] for _ in range(self._concurrency)]
        for delivery in deliveries:
            key = partition_key(delivery.data).encode()
            groups[zlib.crc32(key) % self._concurrency].append(delivery)
        for queue, group in zip(self._queues, groups, strict=True):
            if group:
                await queue.put(group)

    async def _work(self, queue: asyncio.Queue[list[Delivery] | None]) -> None:
        while (batch := await queue.get()) is not None:
            try:
                started = time.perf_counter()
                outcomes = await self._processor.process_batch(batch)
                self._outcomes.update(str(o) for o in outcomes)
                self._batches += 1
                if self.observer is not None:
                    self.observer.consumer_batch(batch, outcomes, time.perf_counter() - started)
            except Exception as exc:  # a bug or a dead connection: un-acked ones come back
                log.error(
                    "batch failed",
                    extra={"mode": self.mode, "size": len(batch), "error": repr(exc)},
                )
            finally:
                for delivery in batch:
                    self._in_flight.pop(id(delivery), None)

    async def _tick(self) -> None:
        # Every in-flight delivery is touched each interval, so at most ack_wait / 2
        # passes between its arrival (or last touch) and the next in-progress.
        while True:
            await asyncio.sleep(self._progress_every)
            for delivery, _since in list(self._in_flight.values()):
                with contextlib.suppress(Exception):  # best effort; ack_wait is the fallback
                    await delivery.in_progress()


async def _finish(task: asyncio.Task[None], deadline: float) -> None:
    """Await ``task`` until ``deadline``; cancel it if it is still running then."""
    try:
        await asyncio.wait_for(asyncio.shield(task), max(deadline - time.monotonic(), 0.0))
    except TimeoutError:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    except Exception as exc:
        log.error("consumer task failed", extra={"error": repr(exc)})


async def _put_before(
    queue: asyncio.Queue[list[Delivery] | None], item: None, deadline: float
) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(queue.put(item), max(deadline - time.monotonic(), 0.0))
