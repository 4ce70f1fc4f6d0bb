"""``OutboxRelay``: publishes committed outbox rows to JetStream, safely with N relays.

Contract:
- **Claim** due rows in a short transaction: ``FOR UPDATE SKIP LOCKED`` plus a lease
  (``lease_owner``, ``lease_expires_at``); no row lock is held while publishing.
  Claims of all relays on a database are serialised by an advisory lock — why, and
  the exact claim rule, in :mod:`bridge.outbox._store`.
- **Order per record**: a row is claimed only with every earlier *pending* row of
  the same (resource_type, resource_id) — never while one is leased by someone or
  waiting for its retry time (:mod:`bridge.outbox._store` has the exact rule).
  A batch publishes records concurrently (at most ``relay.max_in_flight`` PubAcks
  outstanding) and each record's rows in id order.
- **Mark sent** only where the lease is still ours; if the lease was lost, the other
  relay publishes again and JetStream's duplicate window (``Nats-Msg-Id`` = event
  id) drops the copy (``PubAck.duplicate``, counted in ``duplicates_total``).  A relay
  killed mid-batch leaves leased rows that any relay claims after ``relay.lease``
  (at once when its liveness lock died with it, see ``start``).
- **Leases are kept**: a started relay renews the leases of rows it claimed and has
  not settled (:mod:`bridge.outbox._leases`): a slow batch is not taken over.
- **Retry** a failed publish (no PubAck within ``relay.publish_timeout``, no stream,
  server error) after :func:`bridge._support.backoff.backoff_delay` (``retry_base`` doubling,
  capped at ``retry_max``, full jitter).  Only a *rejection* — the server refused the
  message itself (:attr:`bridge.errors.PublishError.rejected`: a JetStream 4xx such as
  a message over the stream's size limit) — counts towards ``relay.max_attempts``,
  after which the row becomes ``failed`` (kept, visible in :meth:`stats`,
  :meth:`requeue_failed`).  Unavailability (no PubAck in time, no responders, no
  stream leader during a cluster election, a lost connection) is retried every
  ``retry_max`` at most for as long as it lasts, because it says nothing about the
  row and ends by itself: sync resumes without an operator.  While ``connected()``
  reports NATS down the relay does not claim at all.
- **Wake-ups**: the in-process commit listener of ``outbox``, PostgreSQL
  ``LISTEN bridge_outbox`` (commits in other processes), the earliest retry this
  relay scheduled, and polling every ``relay.poll_interval`` as a fallback.  A full
  batch is followed immediately by the next one: one round claims, publishes and
  settles until a claim comes back short, overlapped
  (:meth:`bridge.outbox._pipeline.RelayPipeline.drain`; the relay only decides when).
- **Retention**: sent rows older than ``relay.retention`` are deleted every
  ``relay.cleanup_interval`` (:class:`~bridge._support.periodic.Periodic`).
- **Observer** (optional, e.g. :class:`bridge.observability.metrics.BridgeMetrics`): told after
  every published batch how many rows went out, failed and were duplicates, and
  how long publishing and settling the batch took.
- ``stop(timeout)`` is one deadline: the batches in flight get ``timeout`` minus a
  reserve (:data:`STOP_RESERVE`, at most a quarter of it) to finish their PubAcks and
  marks without claiming more, then are cancelled; the reserve releases the rows of a
  cancelled batch (claimable at once; the window drops a republish) and gives up the
  liveness lock last, when no row of this relay is in flight: a graceful stop
  republishes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from bridge._support.backoff import backoff_delay
from bridge._support.periodic import Periodic
from bridge.config import BridgeConfig
from bridge.outbox._listen import NotifyListener
from bridge.outbox._pipeline import RelayObserver, RelayPipeline
from bridge.outbox._store import LIVE_PREFIX, LIVENESS_LOCK_CLASS, ClaimedRow, OutboxStore
from bridge.outbox.capture import Outbox
from bridge.schema import OUTBOX_CHANNEL
from bridge.transport.publisher import Publisher

log = logging.getLogger("bridge.relay")

#: How often the LISTEN task checks that its connection is still open.
LISTEN_CHECK_INTERVAL = 5.0
#: How long start() waits for the LISTEN connection and its liveness lock.
LIVENESS_WAIT = 5.0
#: Seconds of stop()'s timeout kept for releasing rows and the liveness lock (at most
#: a quarter of the timeout): batches that hang are cancelled in time for them.
STOP_RESERVE = 1.0


@dataclass(frozen=True, slots=True)
class RelayStats:
    """Outbox counts from the database plus this relay's in-memory counters.

    ``retried``: pending rows that failed at least once and wait for a retry.
    ``published_total`` counts PubAcks (duplicates included); ``duplicates_total``
    those the server reported as duplicates.
    """

    pending: int
    sent: int
    failed: int
    retried: int
    oldest_pending_age_seconds: float | None
    published_total: int
    publish_failures_total: int
    duplicates_total: int = 0


class OutboxRelay:
    """Publishes outbox rows; see the module docstring for the full contract.

    ``connected`` (e.g. ``lambda: connection.is_connected``) lets the relay pause
    claiming while NATS is down; without it every claim is attempted.
    """

    def __init__(
        self,
        config: BridgeConfig,
        engine: AsyncEngine,
        publisher: Publisher,
        *,
        outbox: Outbox | None = None,
        owner: str | None = None,
        connected: Callable[[], bool] | None = None,
        observer: RelayObserver | None = None,
    ) -> None:
        self._opts = config.relay
        self._outbox = outbox
        self.owner = (owner or f"{config.app_name}-{uuid.uuid4().hex[:12]}")[:64]
        self._store = OutboxStore(
            engine, owner=self.owner, lease=self._opts.lease, max_attempts=self._opts.max_attempts
        )
        self._pipeline = RelayPipeline(self._store, publisher, self._opts, observer=observer)
        self._connected = connected or (lambda: True)
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._batch_lock = asyncio.Lock()  # run_once and the loop never overlap
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cleanup = Periodic(
            self._purge_expired,
            self._opts.cleanup_interval,
            name=f"bridge-relay-cleanup-{self.owner}",
            on_error=_cleanup_failed,
        )
        # Commits in other processes: PostgreSQL NOTIFY on the outbox channel.
        self._listener = NotifyListener(
            engine,
            OUTBOX_CHANNEL,
            self._wake.set,
            retry_max=self._opts.retry_max,
            check_interval=LISTEN_CHECK_INTERVAL,
            name=self.owner,
        )

    # -- counters (the pipeline's) ------------------------------------------------------
    @property
    def observer(self) -> RelayObserver | None:
        return self._pipeline.observer

    @observer.setter
    def observer(self, value: RelayObserver | None) -> None:
        self._pipeline.observer = value

    @property
    def published_total(self) -> int:
        return self._pipeline.published_total

    @property
    def publish_failures_total(self) -> int:
        return self._pipeline.publish_failures_total

    @property
    def duplicates_total(self) -> int:
        return self._pipeline.duplicates_total

    @property
    def batches_total(self) -> int:
        return self._pipeline.batches_total

    # -- lifecycle ------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._task is not None

    @property
    def listening(self) -> bool:
        """True while the ``LISTEN bridge_outbox`` connection is established."""
        return self._listener.listening

    async def start(self) -> None:
        """Start the relay loop, the LISTEN task and the retention task (idempotent)."""
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._stopping.clear()
        if self._outbox is not None:
            self._outbox.add_commit_listener(self._on_commit)
        # Liveness: lease as "live:<owner>" and hold the matching session lock on the
        # LISTEN connection, so if this process dies its leases free at once (see
        # bridge.outbox._store.LIVE_PREFIX) rather than after relay.lease.
        if not self.owner.startswith(LIVE_PREFIX):
            self.owner = (LIVE_PREFIX + self.owner)[:64]
            self._store.owner = self.owner
        self._listener.session_lock = (LIVENESS_LOCK_CLASS, self.owner)
        await self._listener.start()
        if not await self._listener.wait_listening(LIVENESS_WAIT):
            log.warning("relay starts without its liveness lock", extra={"owner": self.owner})
        await self._pipeline.leases.start()
        await self._cleanup.start()
        self._task = asyncio.create_task(self._run(), name=f"bridge-relay-{self.owner}")
        self._wake.set()  # drain whatever is already due
        log.info("relay started", extra={"owner": self.owner})

    async def stop(self, timeout: float = 10.0) -> None:
        """Finish the batches in flight, then end all tasks; release what a cancelled
        batch held; only then give up the liveness lock — all within ``timeout``."""
        deadline = time.monotonic() + timeout
        reserve = min(STOP_RESERVE, timeout / 4)
        task, self._task = self._task, None
        if self._outbox is not None:
            self._outbox.remove_commit_listener(self._on_commit)
        self._stopping.set()
        self._wake.set()
        cancelled = False
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=_left(deadline - reserve))
            if not done:
                cancelled = task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            elif not task.cancelled() and task.exception() is not None:
                log.error("relay task failed", extra={"error": repr(task.exception())})
        await self._cleanup.stop(_left(deadline))
        released = await self._pipeline.leases.stop(_left(deadline))  # cancelled batches
        # Last: while the lock is held, no other relay may take a row this one leased.
        await self._listener.stop(_left(deadline))
        if task is not None:
            log.info(
                "relay stopped",
                extra={"owner": self.owner, "cancelled": cancelled, "released": released},
            )

    def wake(self) -> None:
        """Run a claim round now (thread-unsafe: call from the relay's loop)."""
        self._wake.set()

    def _on_commit(self) -> None:
        # Called by the outbox after a commit that captured rows — from the event
        # loop thread (async sessions) or any thread (sync sessions).
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            if asyncio.get_running_loop() is loop:
                self._wake.set()
                return
        except RuntimeError:
            pass
        loop.call_soon_threadsafe(self._wake.set)

    # -- main loop ------------------------------------------------------------------
    async def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            connected = self._connected()
            if connected:
                round_started = time.monotonic()
                try:
                    async with self._batch_lock:
                        await self._pipeline.drain(self._stopping.is_set)
                    failures = 0
                    self._pipeline.covered_until(round_started)
                except Exception as exc:  # database hiccup: log, pause, try again
                    failures += 1
                    log.warning(
                        "relay round failed", extra={"error": repr(exc), "owner": self.owner}
                    )
                    # A floor keeps full jitter from turning into a tight loop.
                    await self._pause(
                        max(
                            self._opts.retry_base,
                            backoff_delay(
                                failures, base=self._opts.retry_base, maximum=self._opts.retry_max
                            ),
                        )
                    )
                    continue
            await self._sleep(self._idle_timeout(connected))

    def _idle_timeout(self, connected: bool) -> float:
        """Until the next poll, or the earliest scheduled retry if sooner."""
        timeout = self._opts.poll_interval
        retry = self._pipeline.next_retry()
        if connected and retry is not None:
            timeout = min(timeout, max(0.0, retry - time.monotonic()))
        return timeout

    async def _sleep(self, seconds: float) -> None:
        """Wait for a wake-up, the stop signal or ``seconds``, whichever comes first."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds`` unless stopping (commit wake-ups do not cut it short)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    # -- one batch by hand (tests, tools) -----------------------------------------------
    async def run_once(self) -> int:
        """Claim and publish one batch; return how many rows were published and marked."""
        async with self._batch_lock:
            rows = await self.claim()
            return await self.publish_claimed(rows) if rows else 0

    async def claim(self, limit: int | None = None) -> list[ClaimedRow]:
        """Lease up to ``limit`` (default ``batch_size``) due rows to this relay.

        Public so tests and tools can take the first half of a round; rows claimed
        and never settled are claimable by anyone once the lease expires (a started
        relay renews it until ``stop()`` releases them).
        """
        return await self._pipeline.claim(limit or self._opts.batch_size)

    async def publish_claimed(self, rows: Sequence[ClaimedRow]) -> int:
        """Publish claimed rows (per-record chains, pipelined), record the outcome.

        Returns the number of rows published (PubAck received).
        """
        return await self._pipeline.settle(await self._pipeline.publish(rows))

    # -- operations ---------------------------------------------------------------------
    async def _purge_expired(self) -> None:
        deleted = await self.purge_sent(self._opts.retention)
        if deleted:
            log.info("purged sent outbox rows", extra={"rows": deleted})

    async def purge_sent(self, older_than: float) -> int:
        """Delete sent rows whose ``sent_at`` is older than ``older_than`` seconds."""
        return await self._store.purge_sent(older_than)

    async def requeue_failed(self, ids: Sequence[int] | None = None) -> int:
        """Put ``failed`` rows (all, or ``ids``) back to pending, due now, attempts reset."""
        count = await self._store.requeue_failed(ids)
        self._wake.set()
        return count

    async def stats(self) -> RelayStats:
        counts = await self._store.counts()
        return RelayStats(
            pending=counts.pending,
            sent=counts.sent,
            failed=counts.failed,
            retried=counts.retried,
            oldest_pending_age_seconds=counts.oldest_pending_age_seconds,
            published_total=self.published_total,
            publish_failures_total=self.publish_failures_total,
            duplicates_total=self.duplicates_total,
        )


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.0)


def _cleanup_failed(exc: Exception) -> None:
    log.warning("outbox retention cleanup failed", extra={"error": repr(exc)})
