"""``OutboxRelay``: publishes committed outbox rows to JetStream, safely with N relays.

Contract:
- **Claim** due rows in a short transaction: ``FOR UPDATE SKIP LOCKED`` plus a lease
  (``lease_owner``, ``lease_expires_at``); no row lock is held while publishing.
  Claims of all relays on a database are serialised by an advisory lock — why, and
  the exact claim rule, in :mod:`bridge.outbox_store`.
- **Order per record**: a row is claimed only with every earlier *pending* row of
  the same (resource_type, resource_id) — never while one is leased by someone or
  waiting for its retry time (:mod:`bridge.outbox_store` has the exact rule).
  Within a batch, rows of one record are published one after another in id
  order (each waits for its PubAck); different records are pipelined, at most
  ``relay.max_in_flight`` PubAcks outstanding.  A failure stops that record's chain
  for this round; its later rows are released untouched (no attempt counted).
- **Mark sent** only where the lease is still ours; if the lease was lost, the other
  relay publishes again and JetStream's duplicate window (``Nats-Msg-Id`` = event
  id) drops the copy (``PubAck.duplicate``, counted in ``duplicates_total``).  A relay
  killed mid-batch leaves leased rows that any relay claims after ``relay.lease``.
- **Retry** a failed publish (no PubAck within ``relay.publish_timeout``, no stream,
  server error) after :func:`bridge.backoff.backoff_delay` (``retry_base`` doubling,
  capped at ``retry_max``, full jitter); after ``relay.max_attempts`` failures the row
  becomes ``failed`` (kept, visible in :meth:`stats`, :meth:`requeue_failed`).
  While ``connected()`` reports NATS down the relay does not claim at all, so an
  outage of any length burns no attempts: rows wait and go out after the reconnect.
- **Wake-ups**: the in-process commit listener of ``outbox``, PostgreSQL
  ``LISTEN bridge_outbox`` (commits in other processes), the earliest retry this
  relay scheduled, and polling every ``relay.poll_interval`` as a fallback.  A full
  batch is followed immediately by the next one, up to ``BATCHES_IN_FLIGHT``
  batches awaiting PubAcks at once (see ``_drain``).
- **Retention**: sent rows older than ``relay.retention`` are deleted every
  ``relay.cleanup_interval``.
- **Observer** (optional, e.g. :class:`bridge.metrics.BridgeMetrics`): told after
  every published batch how many rows went out, failed and were duplicates, and
  how long publishing and settling the batch took.
- ``stop(timeout)`` finishes the batches in flight (their PubAcks and marks) without
  claiming more, ends every task it started, and cancels what is still running
  after ``timeout`` (rows of a cancelled batch stay leased until the lease expires,
  then are published again).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncEngine

from bridge.backoff import backoff_delay
from bridge.config import BridgeConfig
from bridge.errors import PublishError
from bridge.outbox import Outbox
from bridge.outbox_store import ClaimedRow, Failure, OutboxStore
from bridge.publisher import Publisher
from bridge.schema import OUTBOX_CHANNEL

__all__ = ["ClaimedRow", "OutboxRelay", "RelayStats"]

log = logging.getLogger("bridge.relay")

#: Batches awaiting PubAcks at once in the drain loop (see ``OutboxRelay._drain``).
BATCHES_IN_FLIGHT = 3
#: Claims running at once in the drain loop (they queue on the advisory lock).
CLAIMS_IN_FLIGHT = 2
#: How often the LISTEN task checks that its connection is still open.
LISTEN_CHECK_INTERVAL = 5.0


@dataclass(slots=True)
class _Outcome:
    """What publishing one batch gave: PubAcks, failures, rows released untried."""

    started: float
    sent: list[tuple[int, int]] = field(default_factory=list)  # (row id, stream seq)
    failures: list[Failure] = field(default_factory=list)
    released: list[int] = field(default_factory=list)
    duplicates: int = 0


def _failed(task: asyncio.Task[Any]) -> bool:
    return task.cancelled() or task.exception() is not None


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


class RelayObserver(Protocol):
    """Told about each published batch; must be cheap and must not raise."""

    def relay_batch(
        self, *, published: int, failures: int, duplicates: int, seconds: float
    ) -> None: ...


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
        self.observer = observer
        self._config = config
        self._opts = config.relay
        self._engine = engine
        self._publisher = publisher
        self._outbox = outbox
        self.owner = (owner or f"{config.app_name}-{uuid.uuid4().hex[:12]}")[:64]
        self._store = OutboxStore(
            engine, owner=self.owner, lease=self._opts.lease, max_attempts=self._opts.max_attempts
        )
        self._connected = connected or (lambda: True)
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._batch_lock = asyncio.Lock()  # run_once and the loop never overlap
        # PubAcks outstanding across all batches in flight.
        self._in_flight = asyncio.Semaphore(self._opts.max_in_flight)
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        # Monotonic times at which rows this relay failed become due again (a heap):
        # the loop wakes for them instead of waiting for the next poll.
        self._retry_due: list[float] = []
        self._listening = False
        self._listen_interrupt = asyncio.Event()  # connection lost, or stopping
        self.published_total = 0
        self.publish_failures_total = 0
        self.duplicates_total = 0
        self.batches_total = 0
        self.last_batch_seconds: float | None = None

    # -- lifecycle ------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return bool(self._tasks)

    @property
    def listening(self) -> bool:
        """True while the ``LISTEN bridge_outbox`` connection is established."""
        return self._listening

    async def start(self) -> None:
        """Start the relay loop, the LISTEN task and the retention task (idempotent)."""
        if self._tasks:
            return
        self._loop = asyncio.get_running_loop()
        self._stopping.clear()
        if self._outbox is not None:
            self._outbox.add_commit_listener(self._on_commit)
        self._tasks = [
            asyncio.create_task(self._run(), name=f"bridge-relay-{self.owner}"),
            asyncio.create_task(self._listen(), name=f"bridge-relay-listen-{self.owner}"),
            asyncio.create_task(self._cleanup(), name=f"bridge-relay-cleanup-{self.owner}"),
        ]
        self._wake.set()  # drain whatever is already due
        log.info("relay started", extra={"owner": self.owner})

    async def stop(self, timeout: float = 10.0) -> None:
        """Finish the batches in flight, then end all tasks (cancelled after ``timeout``)."""
        tasks, self._tasks = self._tasks, []
        if self._outbox is not None:
            self._outbox.remove_commit_listener(self._on_commit)
        self._stopping.set()
        self._wake.set()
        self._listen_interrupt.set()
        if not tasks:
            return
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.error("relay task failed", extra={"error": repr(task.exception())})
        log.info(
            "relay stopped",
            extra={"owner": self.owner, "cancelled_tasks": len(pending)},
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
                    await self._drain()
                    failures = 0
                    # Retries due before this round started were covered by it.
                    while self._retry_due and self._retry_due[0] <= round_started:
                        heapq.heappop(self._retry_due)
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
        if connected and self._retry_due:
            timeout = min(timeout, max(0.0, self._retry_due[0] - time.monotonic()))
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

    async def run_once(self) -> int:
        """Claim and publish one batch; return how many rows were published and marked."""
        async with self._batch_lock:
            rows = await self.claim()
            return await self.publish_claimed(rows) if rows else 0

    async def _drain(self) -> int:
        """Claim and publish until a claim comes back short; return rows claimed.

        Pipelined: up to ``CLAIMS_IN_FLIGHT`` claims run while up to
        ``BATCHES_IN_FLIGHT`` batches wait for their PubAcks, and a batch whose
        PubAcks are all in is marked in its own task, off the critical path.  (A
        claim costs several database round trips, each waiting its turn on an event
        loop busy with PubAcks; one claim at a time left the publisher idle.)  This
        keeps per-record order because a claim never returns a row while an earlier
        row of its record is leased — here: to this relay, in a claim or batch
        still in flight — so claims and batches in flight never share a record.
        The first claim of a round is a quarter batch ("slow start"), so the first
        rows go out sooner.
        """
        claimed = 0
        claiming: dict[asyncio.Task[list[ClaimedRow]], int] = {}  # task -> its limit
        publishing: set[asyncio.Task[_Outcome]] = set()
        settling: set[asyncio.Task[int]] = set()
        broken: list[asyncio.Task[_Outcome]] = []
        limit = max(1, self._opts.batch_size // 4)
        exhausted = False  # a claim came back short: nothing more is due now

        def claimed_rows(task: asyncio.Task[list[ClaimedRow]]) -> None:
            nonlocal claimed, exhausted
            asked = claiming.pop(task)
            rows = task.result()  # a failed claim raises here and ends the round
            claimed += len(rows)
            exhausted = exhausted or len(rows) < asked
            if rows:
                publishing.add(asyncio.create_task(self._publish(rows)))

        def published(task: asyncio.Task[_Outcome]) -> None:
            publishing.discard(task)
            if _failed(task):
                broken.append(task)  # its rows stay leased; the error surfaces below
            else:
                settling.add(asyncio.create_task(self._settle(task.result())))

        error: Exception | None = None
        async with self._batch_lock:
            try:
                while True:
                    while (
                        not exhausted
                        and not self._stopping.is_set()
                        and len(claiming) < CLAIMS_IN_FLIGHT
                        and len(claiming) + len(publishing) <= BATCHES_IN_FLIGHT
                    ):
                        claiming[asyncio.create_task(self.claim(limit))] = limit
                        limit = self._opts.batch_size
                    if not claiming and (exhausted or self._stopping.is_set()):
                        break
                    await asyncio.wait(
                        [*claiming, *publishing], return_when=asyncio.FIRST_COMPLETED
                    )
                    for claim in [t for t in claiming if t.done()]:
                        claimed_rows(claim)
                    for batch in [t for t in publishing if t.done()]:
                        published(batch)
                    settling = {t for t in settling if not t.done() or _failed(t)}
            except asyncio.CancelledError:
                # Cancelled (stop() timed out): abandon everything in flight; the
                # rows stay leased and are published again once the lease expires.
                for task in (*claiming, *publishing, *settling):
                    task.cancel()
                await asyncio.gather(*claiming, *publishing, *settling, return_exceptions=True)
                raise
            except Exception as exc:  # a failed claim: still finish what is in flight
                error = exc
            # Whatever is still claiming or publishing is finished and marked.
            while claiming or publishing:
                await asyncio.wait([*claiming, *publishing], return_when=asyncio.FIRST_COMPLETED)
                for claim in [t for t in claiming if t.done()]:
                    try:
                        claimed_rows(claim)
                    except Exception as exc:
                        error = error or exc
                for batch in [t for t in publishing if t.done()]:
                    published(batch)
            results = await asyncio.gather(*broken, *settling, return_exceptions=True)
        errors = [error] if error else []
        errors += [r for r in results if isinstance(r, Exception)]
        if errors:
            raise errors[0]
        return claimed

    async def claim(self, limit: int | None = None) -> list[ClaimedRow]:
        """Lease up to ``limit`` (default ``batch_size``) due rows to this relay.

        Public so tests and tools can take the first half of a round; rows claimed
        and never settled are claimable by anyone once the lease expires.
        """
        return await self._store.claim(limit or self._opts.batch_size)

    async def publish_claimed(self, rows: Sequence[ClaimedRow]) -> int:
        """Publish claimed rows (per-record chains, pipelined), record the outcome.

        Returns the number of rows published (PubAck received).
        """
        return await self._settle(await self._publish(rows))

    async def _publish(self, rows: Sequence[ClaimedRow]) -> _Outcome:
        """Publish ``rows``: records pipelined, each record's rows in id order."""
        outcome = _Outcome(started=time.perf_counter())
        chains: dict[tuple[str, str], list[ClaimedRow]] = {}
        for row in sorted(rows, key=lambda r: r.id):
            chains.setdefault(row.resource_key, []).append(row)
        semaphore = self._in_flight

        async def run_chain(chain: list[ClaimedRow]) -> None:
            for index, row in enumerate(chain):
                try:
                    async with semaphore:
                        result = await self._publisher.publish_raw(row.message())
                except PublishError as exc:
                    delay = backoff_delay(
                        row.attempts + 1, base=self._opts.retry_base, maximum=self._opts.retry_max
                    )
                    outcome.failures.append(Failure(row, str(exc), delay))
                    outcome.released.extend(r.id for r in chain[index + 1 :])
                    return
                outcome.sent.append((row.id, result.seq))
                outcome.duplicates += result.duplicate

        await asyncio.gather(*(run_chain(chain) for chain in chains.values()))
        return outcome

    async def _settle(self, outcome: _Outcome) -> int:
        """Mark a published batch in the database; update counters; return rows sent."""
        sent, failures = outcome.sent, outcome.failures
        dead = await self._store.settle(sent, failures, outcome.released)
        self.published_total += len(sent)
        self.duplicates_total += outcome.duplicates
        self.publish_failures_total += len(failures)
        self.batches_total += 1
        self.last_batch_seconds = time.perf_counter() - outcome.started
        if self.observer is not None:
            try:
                self.observer.relay_batch(
                    published=len(sent),
                    failures=len(failures),
                    duplicates=outcome.duplicates,
                    seconds=self.last_batch_seconds,
                )
            except Exception as exc:  # metrics must never stop the relay
                log.warning("relay observer failed", extra={"error": repr(exc)})
        if failures:
            self._note_failures(failures, dead)
        return len(sent)

    def _note_failures(self, failures: Sequence[Failure], dead: Sequence[int]) -> None:
        now = time.monotonic()
        for failure in failures:
            heapq.heappush(self._retry_due, now + failure.delay)
        first = failures[0]
        # One line per round, not per row: an outage fails whole batches.
        log.warning(
            "publish failed; will retry",
            extra={
                "owner": self.owner,
                "rows": len(failures),
                "event_id": first.row.event_id,
                "subject": first.row.subject,
                "attempt": first.row.attempts + 1,
                "retry_in_seconds": round(first.delay, 3),
                "error": first.error,
            },
        )
        by_id = {f.row.id: f for f in failures}
        for row_id in dead:
            failure = by_id[row_id]
            log.error(
                "outbox row failed permanently after max attempts; requeue_failed() to retry",
                extra={
                    "outbox_id": row_id,
                    "event_id": failure.row.event_id,
                    "subject": failure.row.subject,
                    "attempt": failure.row.attempts + 1,
                    "error": failure.error,
                },
            )

    # -- LISTEN/NOTIFY ----------------------------------------------------------------
    async def _listen(self) -> None:
        """Hold a LISTEN connection; re-establish it if it drops.  Wake-ups only.

        A dropped connection is noticed at once (asyncpg's termination listener),
        or at the latest within ``LISTEN_CHECK_INTERVAL``; until it is back, the
        poll (and the in-process commit listener) still wake the relay.
        """
        failures = 0
        while not self._stopping.is_set():
            self._listen_interrupt.clear()
            try:
                async with self._engine.connect() as conn:
                    raw = await conn.get_raw_connection()
                    driver: Any = raw.driver_connection

                    def notified(*_: object) -> None:
                        self._wake.set()

                    def terminated(*_: object) -> None:
                        self._listen_interrupt.set()

                    driver.add_termination_listener(terminated)
                    await driver.add_listener(OUTBOX_CHANNEL, notified)
                    failures = 0
                    self._listening = True
                    self._wake.set()  # notifications may have been missed meanwhile
                    try:
                        while not self._stopping.is_set() and not driver.is_closed():
                            with contextlib.suppress(TimeoutError):
                                await asyncio.wait_for(
                                    self._listen_interrupt.wait(), LISTEN_CHECK_INTERVAL
                                )
                    finally:
                        self._listening = False
                        driver.remove_termination_listener(terminated)
                        if driver.is_closed():
                            await conn.invalidate()  # never hand a dead connection back
                        else:
                            with contextlib.suppress(Exception):
                                await driver.remove_listener(OUTBOX_CHANNEL, notified)
                error = "connection closed"
            except Exception as exc:  # database restart etc.: polling covers the gap
                error = repr(exc)
            if self._stopping.is_set():
                return
            failures += 1
            log.warning(
                "relay LISTEN connection lost; reconnecting",
                extra={"error": error, "owner": self.owner, "attempt": failures},
            )
            await self._pause(
                max(0.1, backoff_delay(failures, base=0.5, maximum=self._opts.retry_max))
            )

    # -- retention ----------------------------------------------------------------------
    async def _cleanup(self) -> None:
        while not self._stopping.is_set():
            await self._pause(self._opts.cleanup_interval)
            if self._stopping.is_set():
                return
            try:
                deleted = await self.purge_sent(self._opts.retention)
                if deleted:
                    log.info("purged sent outbox rows", extra={"rows": deleted})
            except Exception as exc:
                log.warning("outbox retention cleanup failed", extra={"error": repr(exc)})

    # -- operations ---------------------------------------------------------------------
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
