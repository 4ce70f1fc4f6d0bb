"""What pull and push consumers share: workers, ordering, in-progress, stop, stats.

A consumer receives batches of deliveries (pull: ``fetch``; push: the deliver
subject) and hands them to :class:`~bridge.inbox.processor.InboxProcessor`, which decides
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
- **Decode once**: the receive loop decodes each delivery
  (:meth:`~bridge.inbox.processor.InboxProcessor.decode`, which raises no ``Exception``: a
  poison body is decided ``malformed`` there, alone) and partitions the decoded items by record;
  the worker applies them without parsing the body again.  It yields to the event
  loop every ``DECODE_CHUNK`` deliveries, so a worker whose database reply has
  arrived goes on within one chunk's decoding, not one batch's.
- **Never dies**: receive errors (NATS restart, missing consumer) are logged and
  retried after a short, growing pause; a failing batch is logged with its
  traceback and counted (``batch_errors``), and the loop goes on (its deliveries
  are NAKed or time out and are redelivered).  What still ends a task (a
  ``BaseException``, a cancellation from outside) is caught by the
  :class:`~bridge.consumer._supervisor.TaskSupervisor`: the task is restarted and counted
  (``task_restarts``), and the deliveries it held are NAKed at once, never kept
  alive by the in-progress ticker.  :meth:`BaseConsumer.health` is unhealthy while a
  task is dead or crash-looping (``/health`` answers 503).
- **stop(timeout)**: stop receiving, let the workers finish and acknowledge what
  they hold, flush the acks; whatever is still un-acked when ``timeout`` runs
  out is abandoned (its transaction rolls back) and redelivered by the server.
- **Observer** (optional, e.g. :class:`bridge.observability.metrics.BridgeMetrics`): told about
  every processed batch after its acks were sent, with the outcomes and the time
  ``process_batch`` took.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from bridge.config import BridgeConfig
from bridge.consumer._supervisor import TaskHealth, TaskSupervisor
from bridge.consumer.max_deliveries import MaxDeliveriesWatcher
from bridge.inbox._apply import BatchItem
from bridge.inbox.processor import InboxProcessor
from bridge.transport.connection import Connection
from bridge.transport.delivery import Delivery, Outcome

log = logging.getLogger("bridge.consumer")

RECEIVE_RETRY_MIN = 0.1
RECEIVE_RETRY_MAX = 2.0
RECEIVE = "receive"
PROGRESS = "progress"
#: deliveries decoded between two yields to the event loop (see ``_dispatch``)
DECODE_CHUNK = 32


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
    batch_errors: int = 0  # batches whose processing raised (logged with traceback)
    task_restarts: int = 0  # receive/worker/progress tasks that died and were restarted

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
        :class:`~bridge.consumer.max_deliveries.MaxDeliveriesWatcher`, a safety net for
        consumers still provisioned with a finite server-side ``max_deliver``; restrictive apps lack
        the permission to read advisories and messages by sequence and do not need
        it: a delivery after the last attempt is dead-lettered by the inbox (the
        reserved delivery, :func:`bridge.routing.outcomes.decide_exhausted`) in every mode.
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
        self._queues: list[asyncio.Queue[list[BatchItem] | None]] = []
        self._supervisor = TaskSupervisor(f"{self.mode}-consumer", on_death=self._task_died)
        # deliveries a task holds and no one else will settle if it dies: the receive
        # task's not yet handed to a worker, each worker's current batch
        self._holding: dict[str, list[Delivery]] = {}
        self._cleanups: set[asyncio.Task[None]] = set()
        self._started = False
        self._stopping = asyncio.Event()
        self._in_flight: dict[int, tuple[Delivery, float]] = {}
        self._outcomes: Counter[str] = Counter()
        self._last_delivery_at: float | None = None
        self._redeliveries = 0
        self._batches = 0
        self._receive_errors = 0
        self._batch_errors = 0

    # -- lifecycle ----------------------------------------------------------------
    async def start(self) -> None:
        """Subscribe and start the receive loop, the workers and the in-progress ticker."""
        if self._started:
            return
        self._stopping.clear()
        await self._open()
        self._started = True
        self._queues = [asyncio.Queue(maxsize=1) for _ in range(self._concurrency)]
        for i, queue in enumerate(self._queues):
            name = f"worker-{i}"
            self._supervisor.start(name, functools.partial(self._work, name, queue))
        self._supervisor.start(PROGRESS, self._tick)
        self._supervisor.start(RECEIVE, self._run)
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
        if not self._started:
            return
        self._started = False
        deadline = time.monotonic() + timeout
        self._stopping.set()
        self._supervisor.closing()
        await self._close_intake()
        supervised = self._supervisor
        await _finish(supervised.task(RECEIVE), deadline)
        for queue in self._queues:
            try:
                queue.put_nowait(None)
            except asyncio.QueueFull:  # a batch is still waiting for this worker
                await _put_before(queue, None, deadline)
        for name in supervised.names:
            if name.startswith("worker-"):
                await _finish(supervised.task(name), deadline)
        await _finish(supervised.task(PROGRESS), time.monotonic())  # cancelled at once
        if self._cleanups:
            await asyncio.wait(set(self._cleanups), timeout=max(deadline - time.monotonic(), 0.1))
        if self._watcher is not None:
            await self._watcher.stop(max(deadline - time.monotonic(), 0.1))
        supervised.clear()
        self._queues, self._watcher = [], None
        self._holding.clear()
        await self._close()
        with contextlib.suppress(Exception):  # acks were written; push them out now
            flush = self._connection.nc.flush()
            await asyncio.wait_for(flush, max(deadline - time.monotonic(), 0.1))
        log.info("consumer stopped", extra={"mode": self.mode, "unacked": len(self._in_flight)})
        self._in_flight.clear()

    def stats(self) -> ConsumerStats:
        receive = self._supervisor.task(RECEIVE)
        return ConsumerStats(
            mode=self.mode,
            running=self._started and receive is not None and not receive.done(),
            outcomes={str(k): v for k, v in self._outcomes.items()},
            in_flight=len(self._in_flight),
            last_delivery_at=self._last_delivery_at,
            redeliveries=self._redeliveries,
            batches=self._batches,
            receive_errors=self._receive_errors,
            batch_errors=self._batch_errors,
            task_restarts=self._supervisor.restarts,
        )

    def health(self) -> TaskHealth:
        """Unhealthy while a consumer task is dead or crash-looping (what died, and how)."""
        return self._supervisor.health()

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
            if not deliveries:
                continue
            try:
                await self._dispatch(deliveries)
            except Exception as exc:  # a bug: what was not handed out comes back at once
                self._batch_errors += 1
                log.error(
                    "dispatching a batch failed; NAKing what was not handed out",
                    extra={"mode": self.mode, "size": len(deliveries), "error": repr(exc)},
                    exc_info=True,
                )
                await self._release(self._holding.pop(RECEIVE, []))

    async def _dispatch(self, deliveries: Sequence[Delivery]) -> None:
        now = time.monotonic()
        self._last_delivery_at = time.time()
        for delivery in deliveries:
            self._in_flight[id(delivery)] = (delivery, now)
            if delivery.num_delivered > 1:
                self._redeliveries += 1
        self._holding[RECEIVE] = list(deliveries)  # until each is in a worker's queue
        items: list[BatchItem] = []
        decode = self._processor.decode
        for start in range(0, len(deliveries), DECODE_CHUNK):
            if start:  # a worker's database reply waits at most one chunk's decoding
                await asyncio.sleep(0)
            items += [decode(delivery) for delivery in deliveries[start : start + DECODE_CHUNK]]
        if self._concurrency == 1:
            groups = [items]
        else:  # one record, one worker (a malformed body has key "" and a worker too)
            groups = [[] for _ in range(self._concurrency)]
            for item in items:
                groups[zlib.crc32(item.key.encode()) % self._concurrency].append(item)
        for queue, group in zip(self._queues, groups, strict=True):
            if group:
                await queue.put(group)
                handed = {id(item.delivery) for item in group}
                self._holding[RECEIVE] = [d for d in self._holding[RECEIVE] if id(d) not in handed]
        self._holding.pop(RECEIVE, None)

    async def _work(self, name: str, queue: asyncio.Queue[list[BatchItem] | None]) -> None:
        while (batch := await queue.get()) is not None:
            deliveries = [item.delivery for item in batch]
            self._holding[name] = deliveries  # settled by the processor, or NAKed if we die
            try:
                started = time.perf_counter()
                outcomes = await self._processor.process_decoded(batch)
                self._outcomes.update(str(o) for o in outcomes)
                self._batches += 1
                if self.observer is not None:
                    self.observer.consumer_batch(
                        deliveries, outcomes, time.perf_counter() - started
                    )
            except Exception as exc:  # a bug or a dead connection: un-acked ones come back
                self._batch_errors += 1
                log.error(
                    "batch failed",
                    extra={"mode": self.mode, "size": len(batch), "error": repr(exc)},
                    exc_info=True,
                )
            # not in a finally: if this task dies, the death hook NAKs the batch
            self._holding.pop(name, None)
            for delivery in deliveries:
                self._in_flight.pop(id(delivery), None)

    def _task_died(self, name: str) -> None:
        """Death hook (:mod:`bridge.consumer._supervisor`): NAK what the dead task held."""
        held = self._holding.pop(name, [])
        if held:
            cleanup = asyncio.create_task(self._release(held), name=f"bridge-{self.mode}-release")
            self._cleanups.add(cleanup)
            cleanup.add_done_callback(self._cleanups.discard)

    async def _release(self, deliveries: Sequence[Delivery]) -> None:
        """Stop keeping ``deliveries`` alive and NAK them with their backoff delay.

        A NAK after an ack or term of the same delivery is refused (and ignored):
        only what nobody settled comes back.
        """
        for delivery in deliveries:
            self._in_flight.pop(id(delivery), None)
        for delivery in deliveries:
            with contextlib.suppress(Exception):  # best effort; ack_wait is the fallback
                await delivery.nak(self._config.backoff_for(delivery.num_delivered))

    async def _tick(self) -> None:
        # Every in-flight delivery is touched each interval, so at most ack_wait / 2
        # passes between its arrival (or last touch) and the next in-progress.
        while True:
            await asyncio.sleep(self._progress_every)
            for delivery, _since in list(self._in_flight.values()):
                with contextlib.suppress(Exception):  # best effort; ack_wait is the fallback
                    await delivery.in_progress()


async def _finish(task: asyncio.Task[None] | None, deadline: float) -> None:
    """Await ``task`` until ``deadline``; cancel it if it is still running then.

    Whatever the task ended with is logged, never raised: stop() must finish.
    """
    if task is None:
        return
    try:
        await asyncio.wait_for(asyncio.shield(task), max(deadline - time.monotonic(), 0.0))
    except TimeoutError:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
    except BaseException as exc:
        if not task.done():  # this coroutine is being cancelled, not the task
            raise
        if not task.cancelled():
            log.error("consumer task failed", extra={"task": task.get_name(), "error": repr(exc)})


async def _put_before(
    queue: asyncio.Queue[list[BatchItem] | None], item: None, deadline: float
) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(queue.put(item), max(deadline - time.monotonic(), 0.0))
