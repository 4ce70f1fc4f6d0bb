"""``OutboxRelay``: publishes committed outbox rows to JetStream, safely with N relays.

Contract:
- **Claim** due rows in a short transaction: ``FOR UPDATE SKIP LOCKED`` plus a lease
  (``lease_owner``, ``lease_expires_at``).  No row lock is held while publishing.
  Claim transactions of all relays on a database are serialised with a transaction
  advisory lock, so the "no earlier blocked row of the same record" check sees the
  leases other relays committed — without it two relays could split one record's
  rows between them and publish them out of order.  Claims are cheap (one indexed
  query), so this serialisation does not limit throughput; publishing is not serialised.
- **Order per record**: a row is claimable only if no earlier *pending* row of the
  same (resource_type, resource_id) is leased by someone or waiting for its retry
  time.  Within a batch, rows of one record are published one after another in id
  order; different records are pipelined (``relay.max_in_flight`` PubAcks outstanding).
  A failure stops that record's chain for this round.
- **Mark sent** only where the lease is still ours (``lease_owner = me``); if the
  lease was lost, the other relay publishes again and JetStream's duplicate window
  (``Nats-Msg-Id`` = event id) drops the copy.  A relay killed mid-batch leaves
  leased rows that any relay claims after ``relay.lease`` seconds.
- **Retry** a failed publish after :func:`bridge.backoff.backoff_delay`; after
  ``relay.max_attempts`` failures the row becomes ``failed`` (kept, visible,
  :meth:`requeue_failed`).  While NATS is disconnected the relay does not claim at
  all, so an outage of any length burns no attempts: rows wait and go out after
  the reconnect.
- **Wake-ups**: in-process commit listener, PostgreSQL ``LISTEN bridge_outbox``
  (other processes), and polling every ``relay.poll_interval`` as a fallback.  A
  full batch is followed immediately by the next one.
- **Retention**: sent rows older than ``relay.retention`` are deleted every
  ``relay.cleanup_interval``.
- ``stop(timeout)`` finishes the batch in flight (its PubAcks and marks) and ends
  every task it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bridge.backoff import backoff_delay
from bridge.config import BridgeConfig
from bridge.errors import PublishError
from bridge.outbox import Outbox
from bridge.publisher import OutgoingMessage, Publisher, PublishResult
from bridge.schema import OUTBOX_CHANNEL

log = logging.getLogger("bridge.relay")

#: Advisory lock key serialising claim transactions ("bridge" in ASCII).
CLAIM_LOCK_KEY = 0x627269646765

_CLAIM = text(
    """
    WITH candidates AS (
        SELECT o.id FROM bridge_outbox o
        WHERE o.status = 'pending'
          AND o.next_attempt_at <= now()
          AND (o.lease_expires_at IS NULL OR o.lease_expires_at < now())
          AND NOT EXISTS (
              SELECT 1 FROM bridge_outbox e
              WHERE e.status = 'pending'
                AND e.resource_type = o.resource_type
                AND e.resource_id = o.resource_id
                AND e.id < o.id
                AND (e.next_attempt_at > now()
                     OR (e.lease_expires_at IS NOT NULL AND e.lease_expires_at >= now()))
          )
        ORDER BY o.id
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    UPDATE bridge_outbox o
       SET lease_owner = :owner, lease_expires_at = now() + make_interval(secs => :lease)
      FROM candidates c
     WHERE o.id = c.id
    RETURNING o.id, o.event_id, o.subject, o.resource_type, o.resource_id, o.headers,
              o.payload, o.attempts
    """
)
_MARK_SENT = text(
    """
    UPDATE bridge_outbox o
       SET status = 'sent', sent_at = now(), stream_seq = v.seq,
           lease_owner = NULL, lease_expires_at = NULL, last_error = NULL
      FROM unnest(CAST(:ids AS bigint[]), CAST(:seqs AS bigint[])) AS v(id, seq)
     WHERE o.id = v.id AND o.lease_owner = :owner
    """
)
_RELEASE = text(
    """
    UPDATE bridge_outbox SET lease_owner = NULL, lease_expires_at = NULL
     WHERE id = ANY(CAST(:ids AS bigint[])) AND lease_owner = :owner
    """
)
_FAIL = text(
    """
    UPDATE bridge_outbox
       SET attempts = attempts + 1,
           last_error = :error,
           next_attempt_at = now() + make_interval(secs => :delay),
           status = CASE WHEN attempts + 1 >= :max_attempts THEN 'failed' ELSE 'pending' END,
           lease_owner = NULL, lease_expires_at = NULL
     WHERE id = :id AND lease_owner = :owner
    """
)
_STATS = text(
    """
    SELECT count(*) FILTER (WHERE status = 'pending') AS pending,
           count(*) FILTER (WHERE status = 'sent') AS sent,
           count(*) FILTER (WHERE status = 'failed') AS failed,
           count(*) FILTER (WHERE status = 'pending' AND attempts > 0) AS retried,
           extract(epoch FROM now() - min(created_at) FILTER (WHERE status = 'pending'))
               AS oldest_pending_age
      FROM bridge_outbox
    """
)


@dataclass(frozen=True, slots=True)
class RelayStats:
    pending: int
    sent: int
    failed: int
    retried: int
    oldest_pending_age_seconds: float | None
    published_total: int
    publish_failures_total: int


@dataclass(frozen=True, slots=True)
class ClaimedRow:
    id: int
    event_id: str
    subject: str
    resource_key: tuple[str, str]
    headers: dict[str, str]
    payload: dict[str, Any]
    attempts: int

    def message(self) -> OutgoingMessage:
        data = json.dumps(self.payload, separators=(",", ":")).encode()
        return OutgoingMessage(self.subject, data, self.headers)


class OutboxRelay:
    """Publishes outbox rows; see the module docstring for the full contract."""

    def __init__(
        self,
        config: BridgeConfig,
        engine: AsyncEngine,
        publisher: Publisher,
        *,
        outbox: Outbox | None = None,
        owner: str | None = None,
        connected: Callable[[], bool] | None = None,
    ) -> None:
        self._config = config
        self._opts = config.relay
        self._engine = engine
        self._publisher = publisher
        self._outbox = outbox
        self.owner = owner or f"{config.app_name}-{uuid.uuid4().hex[:12]}"
        self._connected = connected or (lambda: True)
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.published_total = 0
        self.publish_failures_total = 0
        self.batches_total = 0
        self.last_batch_seconds: float | None = None

    # -- lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
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
        """Finish the batch in flight, then end all tasks (cancelled after ``timeout``)."""
        tasks, self._tasks = self._tasks, []
        if self._outbox is not None:
            self._outbox.remove_commit_listener(self._on_commit)
        self._stopping.set()
        self._wake.set()
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
        log.info("relay stopped", extra={"owner": self.owner})

    def wake(self) -> None:
        self._wake.set()

    def _on_commit(self) -> None:
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
            full = False
            if self._connected():
                try:
                    claimed = await self._cycle()
                    full = claimed >= self._opts.batch_size
                    failures = 0
                except Exception as exc:  # database hiccup: log and retry after a pause
                    failures += 1
                    log.warning(
                        "relay cycle failed", extra={"error": repr(exc), "owner": self.owner}
                    )
                    await self._sleep(
                        backoff_delay(
                            failures, base=self._opts.retry_base, maximum=self._opts.retry_max
                        )
                    )
                    continue
            if full:
                continue
            await self._sleep(self._opts.poll_interval)

    async def _sleep(self, seconds: float) -> None:
        """Wait for a wake-up, the stop signal or ``seconds``, whichever comes first."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    async def run_once(self) -> int:
        """Claim and publish one batch; return how many rows were marked sent."""
        before = self.published_total
        await self._cycle()
        return self.published_total - before

    async def _cycle(self) -> int:
        rows = await self.claim()
        if not rows:
            return 0
        started = time.perf_counter()
        await self.publish_claimed(rows)
        self.batches_total += 1
        self.last_batch_seconds = time.perf_counter() - started
        return len(rows)

    async def claim(self, limit: int | None = None) -> list[ClaimedRow]:
        """Lease up to ``limit`` due rows to this relay (short transaction)."""
        async with self._engine.begin() as conn:
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CLAIM_LOCK_KEY})
            result = await conn.execute(
                _CLAIM,
                {
                    "limit": limit or self._opts.batch_size,
                    "owner": self.owner,
                    "lease": self._opts.lease,
                },
            )
            records = result.mappings().all()
        rows = [
            ClaimedRow(
                id=r["id"],
                event_id=str(r["event_id"]),
                subject=r["subject"],
                resource_key=(r["resource_type"], r["resource_id"]),
                headers=dict(r["headers"]),
                payload=dict(r["payload"]),
                attempts=r["attempts"],
            )
            for r in records
        ]
        rows.sort(key=lambda r: r.id)
        return rows

    async def publish_claimed(self, rows: Sequence[ClaimedRow]) -> None:
        """Publish claimed rows (per-record chains, pipelined) and record the results."""
        chains: dict[tuple[str, str], list[ClaimedRow]] = {}
        for row in rows:
            chains.setdefault(row.resource_key, []).append(row)
        semaphore = asyncio.Semaphore(self._opts.max_in_flight)
        sent: list[tuple[int, int]] = []
        failed: list[tuple[ClaimedRow, PublishError]] = []
        released: list[int] = []

        async def run_chain(chain: list[ClaimedRow]) -> None:
            for index, row in enumerate(chain):
                async with semaphore:
                    try:
                        result: PublishResult = await self._publisher.publish_raw(row.message())
                    except PublishError as exc:
                        failed.append((row, exc))
                        released.extend(r.id for r in chain[index + 1 :])
                        return
                sent.append((row.id, result.seq))

        await asyncio.gather(*(run_chain(chain) for chain in chains.values()))
        await self._record(sent, failed, released)

    async def _record(
        self,
        sent: list[tuple[int, int]],
        failed: list[tuple[ClaimedRow, PublishError]],
        released: list[int],
    ) -> None:
        async with self._engine.begin() as conn:
            if sent:
                await conn.execute(
                    _MARK_SENT,
                    {
                        "ids": [i for i, _ in sent],
                        "seqs": [s for _, s in sent],
                        "owner": self.owner,
                    },
                )
            if released:
                await conn.execute(_RELEASE, {"ids": released, "owner": self.owner})
            for row, error in failed:
                attempt = row.attempts + 1
                delay = backoff_delay(
                    attempt, base=self._opts.retry_base, maximum=self._opts.retry_max
                )
                await conn.execute(
                    _FAIL,
                    {
                        "id": row.id,
                        "error": str(error)[:2000],
                        "delay": delay,
                        "max_attempts": self._opts.max_attempts,
                        "owner": self.owner,
                    },
                )
                log.warning(
                    "publish failed; will retry",
                    extra={
                        "event_id": row.event_id,
                        "subject": row.subject,
                        "attempt": attempt,
                        "retry_in_seconds": round(delay, 3),
                        "error": str(error),
                    },
                )
        self.published_total += len(sent)
        self.publish_failures_total += len(failed)

    # -- LISTEN/NOTIFY ----------------------------------------------------------------
    async def _listen(self) -> None:
        """Hold a LISTEN connection; re-establish it if it drops.  Wake-ups only."""
        failures = 0
        while not self._stopping.is_set():
            try:
                async with self._engine.connect() as conn:
                    raw = await conn.get_raw_connection()
                    driver: Any = raw.driver_connection

                    def notified(*_: object) -> None:
                        self._wake.set()

                    await driver.add_listener(OUTBOX_CHANNEL, notified)
                    failures = 0
                    try:
                        while not self._stopping.is_set() and not driver.is_closed():
                            with contextlib.suppress(TimeoutError):
                                await asyncio.wait_for(self._stopping.wait(), 5.0)
                    finally:
                        with contextlib.suppress(Exception):
                            await driver.remove_listener(OUTBOX_CHANNEL, notified)
            except Exception as exc:  # database restart etc.: polling covers the gap
                failures += 1
                log.warning("relay LISTEN connection lost", extra={"error": repr(exc)})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._stopping.wait(),
                        backoff_delay(failures, base=0.5, maximum=self._opts.retry_max),
                    )

    # -- retention ----------------------------------------------------------------------
    async def _cleanup(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._opts.cleanup_interval)
            if self._stopping.is_set():
                return
            try:
                deleted = await self.purge_sent(self._opts.retention)
                if deleted:
                    log.info("purged sent outbox rows", extra={"rows": deleted})
            except Exception as exc:
                log.warning("outbox retention cleanup failed", extra={"error": repr(exc)})

    async def purge_sent(self, older_than: float) -> int:
        """Delete sent rows whose ``sent_at`` is older than ``older_than`` seconds."""
        async with self._engine.begin() as conn:
            result = await conn.execute(
                text(
                    "DELETE FROM bridge_outbox WHERE status = 'sent' "
                    "AND sent_at < now() - make_interval(secs => :age)"
                ),
                {"age": older_than},
            )
        return int(result.rowcount or 0)

    async def requeue_failed(self, ids: Sequence[int] | None = None) -> int:
        """Put ``failed`` rows (all, or ``ids``) back to pending with attempts reset."""
        where = "status = 'failed'"
        params: dict[str, Any] = {}
        if ids is not None:
            where += " AND id = ANY(CAST(:ids AS bigint[]))"
            params["ids"] = list(ids)
        async with self._engine.begin() as conn:
            result = await conn.execute(
                text(
                    "UPDATE bridge_outbox SET status = 'pending', attempts = 0, "
                    f"next_attempt_at = now(), last_error = NULL WHERE {where}"
                ),
                params,
            )
        self._wake.set()
        return int(result.rowcount or 0)

    async def stats(self) -> RelayStats:
        async with self._engine.connect() as conn:
            row = (await conn.execute(_STATS)).mappings().one()
        age = row["oldest_pending_age"]
        return RelayStats(
            pending=int(row["pending"]),
            sent=int(row["sent"]),
            failed=int(row["failed"]),
            retried=int(row["retried"]),
            oldest_pending_age_seconds=float(age) if age is not None else None,
            published_total=self.published_total,
            publish_failures_total=self.publish_failures_total,
        )
