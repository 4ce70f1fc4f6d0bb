"""The relay's batch pipeline: claim → publish → settle, overlapped.

Contract of :func:`drain` (one relay round):
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
  first error is raised.  Cancelled: everything in flight is cancelled; leased rows
  are published again once their lease expires.

Contract of :func:`publish_batch`:
- Rows are grouped by record (resource_type, resource_id) into chains in id order.
- Chains run concurrently; every publish holds ``in_flight`` (a semaphore shared by
  all batches of a relay) while it waits for its PubAck, which bounds the PubAcks
  outstanding.  Within a chain a row is published only after the previous row's
  PubAck, so a record's events reach the stream in id order.
- A failed publish (:class:`~bridge.errors.PublishError`: no PubAck in time, no
  stream, server error) stops its chain: the row is a :class:`Failure` carrying its
  retry delay and whether the server rejected the message, the chain's later rows
  are *released* (never attempted this round).
- Nothing touches the database here; the caller settles the :class:`BatchOutcome`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from bridge._support.backoff import backoff_delay
from bridge.errors import PublishError
from bridge.outbox._store import ClaimedRow, Failure
from bridge.transport.publisher import Publisher

#: Batches awaiting PubAcks at once in a round.
BATCHES_IN_FLIGHT = 3
#: Claims running at once in a round (they queue on the claim advisory lock).
CLAIMS_IN_FLIGHT = 2


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


async def publish_batch(
    publisher: Publisher,
    rows: Sequence[ClaimedRow],
    *,
    in_flight: asyncio.Semaphore,
    retry_base: float,
    retry_max: float,
) -> BatchOutcome:
    """Publish ``rows`` (module doc: per-record chains, pipelined across records)."""
    outcome = BatchOutcome()
    chains: dict[tuple[str, str], list[ClaimedRow]] = {}
    for row in sorted(rows, key=lambda r: r.id):
        chains.setdefault(row.resource_key, []).append(row)

    async def run_chain(chain: list[ClaimedRow]) -> None:
        for index, row in enumerate(chain):
            try:
                async with in_flight:
                    result = await publisher.publish_raw(row.message())
            except PublishError as exc:
                delay = backoff_delay(row.attempts + 1, base=retry_base, maximum=retry_max)
                outcome.failures.append(Failure(row, str(exc), delay, rejected=exc.rejected))
                outcome.released.extend(r.id for r in chain[index + 1 :])
                return
            outcome.sent.append((row.id, result.seq))
            outcome.duplicates += result.duplicate

    await asyncio.gather(*(run_chain(chain) for chain in chains.values()))
    return outcome


async def drain(
    claim: Callable[[int], Coroutine[Any, Any, list[ClaimedRow]]],
    publish: Callable[[Sequence[ClaimedRow]], Coroutine[Any, Any, BatchOutcome]],
    settle: Callable[[BatchOutcome], Coroutine[Any, Any, int]],
    *,
    batch_size: int,
    stopping: Callable[[], bool],
) -> int:
    """One round of the pipeline (module doc); return the number of rows claimed."""
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
