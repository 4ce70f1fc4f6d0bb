"""One relay's pipeline: claim → publish → settle, overlapped (:class:`RelayPipeline`).

The relay (:mod:`bridge.outbox.relay`) decides *when* to run a round; this module is
the round.  Every step goes down — to :mod:`bridge.outbox._store` (SQL),
:mod:`bridge.outbox._leases` and :mod:`bridge.transport.publisher` — and nothing here
calls back into the relay.

Contract of :meth:`RelayPipeline.drain` (one round):
- Claims run ``CLAIMS_IN_FLIGHT`` at a time while up to ``BATCHES_IN_FLIGHT``
  batches wait for their PubAcks; a batch whose PubAcks are all in is settled
  (marked in the database) in its own task, off the critical path.  Why overlap
  claims: a claim costs several database round trips, each waiting its turn on an
  event loop busy with PubAcks; one claim at a time left the publisher idle.
- Per-record order holds because a claim never returns a row while an earlier row
  of its record is leased — here: to this relay, in a claim or batch still in
  flight — so claims and batches in flight never share a record.
- The first claim of a round asks for a quarter batch ("slow start"), so the first
  rows go out sooner; the round ends when a claim comes back short, or when
  ``stopping()`` — then no new claim starts, and what was claimed is still
  published and settled.
- A failed claim or settle ends the round after everything in flight finished; the
  first error is raised.  Cancelled: everything in flight is cancelled; the rows
  stay held by the :class:`~bridge.outbox._leases.LeaseKeeper`, which releases them
  when the relay stops.

Contract of :meth:`RelayPipeline.publish`:
- Rows are grouped by record (resource_type, resource_id) into chains in id order.
- The batch goes out in *waves*, pipelined like nats-py's ``publish_async``: wave k
  writes the k-th row of every chain still going (:meth:`Publisher.send`, no wait per
  message), then checks every PubAck of the wave (:meth:`Publisher.acks`, one
  deadline of ``relay.publish_timeout``).  So within a chain a row is written only
  after the previous row's PubAck, and a record's events reach the stream in id
  order; rows of different records share waves.  Usually every chain has one row
  and a batch is one wave.
- Every written message holds a slot of ``in_flight`` (a semaphore shared by all
  batches of the relay) until its PubAck (or its failure) arrives, which bounds the
  PubAcks outstanding (``relay.max_in_flight``).
- A failed publish (:class:`~bridge.errors.PublishError`: refused before sending,
  e.g. :class:`~bridge.errors.PayloadTooLargeError`; no PubAck in time, no stream,
  server error) stops its chain: the row is a :class:`Failure` carrying its retry
  delay (:func:`bridge._support.backoff.backoff_delay` of its attempts) and whether
  the server rejected the message; the chain's later rows are *released* (never
  attempted this round).  A duplicate PubAck is a success (``duplicates``).

:meth:`RelayPipeline.settle` records a batch's outcome (:meth:`OutboxStore.settle`),
counts it, tells the observer, logs failures once per batch, and remembers when the
failed rows are due again (:meth:`RelayPipeline.next_retry`, the relay's wake-up).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from bridge._support.backoff import backoff_delay
from bridge.config import RelayOptions
from bridge.envelope import MSG_ID_HEADER
from bridge.errors import PublishError
from bridge.outbox._leases import LeaseKeeper
from bridge.outbox._store import ClaimedRow, Failure, OutboxStore
from bridge.transport.publisher import OutgoingMessage, PendingAck, Publisher

log = logging.getLogger("bridge.relay")

#: Batches awaiting PubAcks at once in a round.
BATCHES_IN_FLIGHT = 3
#: Claims running at once in a round (they queue on the claim advisory lock).
CLAIMS_IN_FLIGHT = 2


class RelayObserver(Protocol):
    """Told about each published batch; must be cheap and must not raise."""

    def relay_batch(
        self, *, published: int, failures: int, duplicates: int, seconds: float
    ) -> None: ...


@dataclass(slots=True)
class BatchOutcome:
    """What publishing one batch gave: PubAcks, failures, rows released untried."""

    started: float = field(default_factory=time.perf_counter)
    sent: list[tuple[int, int]] = field(default_factory=list)  # (row id, stream seq)
    failures: list[Failure] = field(default_factory=list)
    released: list[int] = field(default_factory=list)
    duplicates: int = 0

    @property
    def row_ids(self) -> list[int]:
        """Every row of the batch (each is sent, failed or released)."""
        return [i for i, _ in self.sent] + [f.row.id for f in self.failures] + self.released


def message_of(row: ClaimedRow) -> OutgoingMessage:
    """The stored envelope with ``Nats-Msg-Id`` = the row's event id.

    The body was spliced from PostgreSQL's own text rendering of the stored JSONB body
    and the row's columns (:func:`bridge.outbox.body.published_body`) — decoding and
    re-encoding it in Python was the relay's largest per-event CPU cost.
    """
    if row.headers is None:
        return OutgoingMessage(row.subject, row.body, {MSG_ID_HEADER: row.event_id})
    return OutgoingMessage(row.subject, row.body, {**row.headers, MSG_ID_HEADER: row.event_id})


class RelayPipeline:
    """Claim, publish and settle outbox rows for one relay (module doc)."""

    def __init__(
        self,
        store: OutboxStore,
        publisher: Publisher,
        options: RelayOptions,
        *,
        observer: RelayObserver | None = None,
    ) -> None:
        self.store = store
        self.observer = observer
        self.leases = LeaseKeeper(store, lease=options.lease, name=store.owner)
        self._publisher = publisher
        self._opts = options
        # PubAcks outstanding across all batches in flight; a PubAck's future frees its
        # slot when done (one callback object for all, not a closure per message).
        self._in_flight = asyncio.Semaphore(options.max_in_flight)
        self._free_slot: Callable[[object], None] = lambda _: self._in_flight.release()
        # Monotonic times at which rows this relay failed become due again (a heap).
        self._retry_due: list[float] = []
        self.published_total = 0
        self.publish_failures_total = 0
        self.duplicates_total = 0
        self.batches_total = 0
        self.last_batch_seconds: float | None = None

    # -- the three steps ----------------------------------------------------------------
    async def claim(self, limit: int) -> list[ClaimedRow]:
        """Lease up to ``limit`` due rows; they are held (renewed) until settled."""
        rows = await self.store.claim(limit)
        self.leases.hold(row.id for row in rows)
        return rows

    async def publish(self, rows: Sequence[ClaimedRow]) -> BatchOutcome:
        """Publish ``rows`` as per-record chains in waves (module doc); no database."""
        with self.leases.settling([row.id for row in rows], on_success=False):
            outcome = BatchOutcome()
            chains: dict[tuple[str, str], list[ClaimedRow]] = {}
            for row in sorted(rows, key=lambda r: r.id):
                chains.setdefault(row.resource_key, []).append(row)
            going = list(chains.values())
            depth = 0
            while going:
                going = await self._wave(going, depth, outcome)
                depth += 1
            return outcome

    async def _wave(
        self, chains: list[list[ClaimedRow]], depth: int, outcome: BatchOutcome
    ) -> list[list[ClaimedRow]]:
        """Publish row ``depth`` of every chain; return the chains that go on."""
        publisher, in_flight, free_slot = self._publisher, self._in_flight, self._free_slot
        written: list[tuple[list[ClaimedRow], PendingAck]] = []
        try:
            for chain in chains:
                await in_flight.acquire()
                try:
                    pending = await publisher.send(message_of(chain[depth]))
                except PublishError as exc:
                    in_flight.release()
                    self._failed(chain, depth, exc, outcome)
                    continue
                except BaseException:
                    in_flight.release()
                    raise
                pending.future.add_done_callback(free_slot)
                written.append((chain, pending))
            results = await publisher.acks([pending for _, pending in written])
        except BaseException:
            for _, pending in written:  # cancelled: free the window's slots
                pending.future.cancel()
            raise
        going: list[list[ClaimedRow]] = []
        for (chain, _), result in zip(written, results, strict=True):
            if isinstance(result, PublishError):
                self._failed(chain, depth, result, outcome)
                continue
            outcome.sent.append((chain[depth].id, result.seq))
            outcome.duplicates += result.duplicate
            if depth + 1 < len(chain):
                going.append(chain)
        return going

    def _failed(
        self, chain: list[ClaimedRow], depth: int, exc: PublishError, outcome: BatchOutcome
    ) -> None:
        """Row ``depth`` of ``chain`` failed: it waits for its retry, the rest is released."""
        row = chain[depth]
        delay = backoff_delay(
            row.attempts + 1, base=self._opts.retry_base, maximum=self._opts.retry_max
        )
        outcome.failures.append(Failure(row, str(exc), delay, rejected=exc.rejected))
        outcome.released.extend(r.id for r in chain[depth + 1 :])

    async def settle(self, outcome: BatchOutcome) -> int:
        """Record a published batch in the database and count it; return rows sent."""
        sent, failures = outcome.sent, outcome.failures
        with self.leases.settling(outcome.row_ids):
            dead = await self.store.settle(sent, failures, outcome.released)
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

    # -- retries ------------------------------------------------------------------------
    def next_retry(self) -> float | None:
        """Monotonic time the earliest row this relay failed is due again (``None``: none)."""
        return self._retry_due[0] if self._retry_due else None

    def covered_until(self, moment: float) -> None:
        """A round that started at ``moment`` covered the retries due before it."""
        while self._retry_due and self._retry_due[0] <= moment:
            heapq.heappop(self._retry_due)

    def _note_failures(self, failures: Sequence[Failure], dead: Sequence[int]) -> None:
        now = time.monotonic()
        for failure in failures:
            heapq.heappush(self._retry_due, now + failure.delay)
        first = failures[0]
        # One line per round, not per row: an outage fails whole batches.
        log.warning(
            "publish failed; will retry",
            extra={
                "owner": self.store.owner,
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

    # -- one round ----------------------------------------------------------------------
    async def drain(self, stopping: Callable[[], bool]) -> int:
        """One round (module doc); return the number of rows claimed."""
        claim, publish, settle = self.claim, self.publish, self.settle
        batch_size = self._opts.batch_size
        claimed = 0
        claiming: dict[asyncio.Task[list[ClaimedRow]], int] = {}  # task -> the limit it asked
        publishing: set[asyncio.Task[BatchOutcome]] = set()
        settling: set[asyncio.Task[int]] = set()
        broken: list[asyncio.Task[BatchOutcome]] = []
        limit = max(1, batch_size // 4)
        exhausted = False  # a claim came back short: nothing more is due now

        def claim_done(task: asyncio.Task[list[ClaimedRow]]) -> None:
            nonlocal claimed, exhausted
            asked = claiming.pop(task)
            rows = task.result()  # a failed claim raises here
            claimed += len(rows)
            exhausted = exhausted or len(rows) < asked
            if rows:
                publishing.add(asyncio.create_task(publish(rows)))

        def publish_done(task: asyncio.Task[BatchOutcome]) -> None:
            publishing.discard(task)
            if _failed(task):
                broken.append(task)  # its rows stay leased; the error surfaces below
            else:
                settling.add(asyncio.create_task(settle(task.result())))

        async def next_done() -> None:
            await asyncio.wait([*claiming, *publishing], return_when=asyncio.FIRST_COMPLETED)

        error: Exception | None = None
        try:
            while True:
                while (
                    not exhausted
                    and not stopping()
                    and len(claiming) < CLAIMS_IN_FLIGHT
                    and len(claiming) + len(publishing) <= BATCHES_IN_FLIGHT
                ):
                    claiming[asyncio.create_task(claim(limit))] = limit
                    limit = batch_size
                if not claiming and (exhausted or stopping()):
                    break
                await next_done()
                for claim_task in [t for t in claiming if t.done()]:
                    claim_done(claim_task)
                for batch in [t for t in publishing if t.done()]:
                    publish_done(batch)
                settling = {t for t in settling if not t.done() or _failed(t)}
        except asyncio.CancelledError:
            for task in (*claiming, *publishing, *settling):
                task.cancel()
            await asyncio.gather(*claiming, *publishing, *settling, return_exceptions=True)
            raise
        except Exception as exc:  # a failed claim: still finish what is in flight
            error = exc
        while claiming or publishing:  # whatever was claimed is published and settled
            await next_done()
            for claim_task in [t for t in claiming if t.done()]:
                try:
                    claim_done(claim_task)
                except Exception as exc:
                    error = error or exc
            for batch in [t for t in publishing if t.done()]:
                publish_done(batch)
        results = await asyncio.gather(*broken, *settling, return_exceptions=True)
        errors = [error] if error else []
        errors += [r for r in results if isinstance(r, Exception)]
        if errors:
            raise errors[0]
        return claimed


def _failed(task: asyncio.Task[Any]) -> bool:
    return task.cancelled() or task.exception() is not None
