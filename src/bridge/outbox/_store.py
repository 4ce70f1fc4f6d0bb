"""The relay's side of the outbox table: claim, settle, count, purge, requeue.

Every method is one short transaction; none is held across a network call.

Claiming (``OutboxStore.claim``):

- A row is *free* when it is ``pending``, due (``next_attempt_at <= now()``) and
  not leased (no lease, or the lease expired — a dead relay's rows are taken over).
- Rows are scanned in ``(next_attempt_at, id)`` order — the order of the partial
  index ``ix_bridge_outbox_due`` — so a claim reads about ``limit`` live index entries
  whatever the size of the table (``ORDER BY id`` would need an index on pending ids).
- The scan starts after the relay's *claim cursor* (:mod:`bridge.outbox._cursor`, why
  and when) while claims come back full; a claim from the cursor that comes back short
  but not empty goes on from the start in the same transaction.
- *Candidates*: the first ``limit`` free rows in that order whose earlier pending
  rows of the same (resource_type, resource_id) are all free and sort before them
  (none leased — by another relay, or to this relay in a batch still in flight —
  none waiting for a retry, none due later).  Locked with ``FOR UPDATE SKIP LOCKED``.
- *Claimed*: candidates whose earlier pending rows of the same record are all
  candidates too.  So a record's rows are always published by one relay, in id
  order, never with a gap.  The head row of every record among the candidates
  sorts first within its record and is always claimed, so claiming makes progress.
- Claimed rows are leased (``lease_owner``, ``lease_expires_at = now() + lease``) and
  returned as the relay sends them: the envelope's bytes, spliced from PostgreSQL's
  text rendering of the stored body and the row's columns (:mod:`bridge.outbox.body`;
  never decoded), and the stored headers as text, ``NULL`` when there are none — the
  common case, which then costs no JSON decoding at all.
- A record's other pending rows are found through the record-key index
  (:func:`bridge.schema.record_key_sql`, a hash of the two columns, compared too).
- The planner is told, for this transaction only, to use the ordered index scan and
  nested-loop index probes (no sort, bitmap, sequential scan, hash join or JIT):
  without statistics or with a skewed backlog it otherwise sorts every due row.
- Claim transactions of all relays on a database are serialised with
  ``pg_advisory_xact_lock(CLAIM_LOCK_KEY)``, taken in its own statement *before* the
  claim statement.  Why: under READ COMMITTED the claim statement's snapshot would
  otherwise predate another relay's concurrent claim, whose freshly locked rows are
  skipped (SKIP LOCKED) while the NOT EXISTS checks still see them as free.  (The
  *claimed* stage refuses such a row's successors anyway, so the lock is the first of
  two guards; it keeps relays from wasting claims on each other.)
  A 1000-row claim takes 15-40 ms (docs/BENCHMARKS.md, "Flat with size"), which
  bounds one database's drain at tens of thousands of rows a second; publishing is
  not serialised.

Counting and re-queueing are :mod:`bridge.outbox.admin`'s (shared with the CLI);
retention purges here, in chunks (unattended, on tables that may have grown large).

Settling (``OutboxStore.settle``), only for rows still leased to this owner (a lost
lease means another relay owns the row now and will publish it again; the
``Nats-Msg-Id`` duplicate window collapses the second publish):

- sent → ``status='sent'``, ``sent_at``, ``stream_seq``, lease cleared;
- failed → ``attempts + 1``, ``last_error``, ``next_attempt_at = now() + delay``,
  lease cleared, and ``status='failed'`` once ``attempts >= max_attempts``;
- released (never attempted: its record's chain stopped) → lease cleared, due no
  earlier than the failed head's retry (so the next claim takes the whole chain).

Renewing (``OutboxStore.renew``) extends the leases of rows still leased to this
owner; releasing (``OutboxStore.release``) clears them (a stopping relay hands back
what it will not settle).  Neither touches a row another relay owns now.

Dead connections: every claim, settle, renew, release and purge transaction is bounded
by the lease (``relay.lease``: a slower one is pointless, its leases have expired).
Why: a TCP connection cut without a FIN or an RST never answers, and asyncpg has no
timeout of its own on a query, a commit or SQLAlchemy's pool pre-ping.  Past the bound
the transaction raises ``TimeoutError`` naming the database
(:class:`bridge._support.deadline.Deadline`: it cancels again until the dead connection
lets go); SQLAlchemy discards the connection and the next transaction gets a fresh one.

``failed`` rows no longer block later rows of their record (they are not pending):
one poisoned event must not stop a record's sync forever, and since every event
carries the full row snapshot, the later event supersedes it.  A requeued failed
row is published again; consumers discard it as stale (last-writer-wins).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bridge._support.deadline import Deadline
from bridge.outbox._cursor import ClaimCursor, Position
from bridge.outbox.admin import OutboxCounts, outbox_counts, requeue
from bridge.outbox.body import published_body
from bridge.schema import record_key_sql

#: Advisory lock key serialising claim transactions ("bridge" in ASCII).
CLAIM_LOCK_KEY = 0x627269646765
#: The position before every row of the due index (a scan from its start).
_START = datetime(1, 1, 1, tzinfo=UTC)
#: Rows deleted per statement by :meth:`OutboxStore.purge_sent` (short locks).
PURGE_CHUNK = 5000

# jit off for the claim transaction: on a large table the planner's cost estimate
# crosses jit_above_cost and PostgreSQL spends 10-20 ms compiling a query that runs
# in a few; the claim is latency-critical and small, so JIT never pays off here.
_LOCK = text(
    "SELECT set_config('jit', 'off', true), set_config('enable_sort', 'off', true), "
    "set_config('enable_bitmapscan', 'off', true), set_config('enable_seqscan', 'off', true), "
    "set_config('enable_hashjoin', 'off', true), pg_advisory_xact_lock(:key)"
)
#: Relays that hold a liveness lock lease rows as ``live:<owner>`` and keep the session
#: advisory lock (LIVENESS_LOCK_CLASS, hashtext(owner)) on their LISTEN connection while
#: they run.  A ``live:`` lease whose lock is gone belongs to a dead process (its backend
#: ended with it): the rows are claimable at once instead of after ``relay.lease``.
LIVE_PREFIX = "live:"
LIVENESS_LOCK_CLASS = 0x6272  # "br"

_CLAIM = text(
    f"""
    WITH live AS MATERIALIZED (
        SELECT objid FROM pg_locks
         WHERE locktype = 'advisory' AND classid = :live_class AND objsubid = 2 AND granted
    ), candidates AS (
        SELECT o.id, o.resource_type, o.resource_id FROM bridge_outbox o
        WHERE o.status = 'pending'
          AND o.next_attempt_at <= now()
          AND (o.next_attempt_at, o.id)
              > (CAST(:after_at AS timestamptz), CAST(:after_id AS bigint))
          AND (o.lease_expires_at IS NULL OR o.lease_expires_at < now()
               OR (o.lease_owner LIKE 'live:%'
                   AND hashtext(o.lease_owner)::oid NOT IN (SELECT objid FROM live)))
          AND NOT EXISTS (
              SELECT 1 FROM bridge_outbox e
              WHERE e.status = 'pending'
                AND {record_key_sql("e")} = {record_key_sql("o")}
                AND e.resource_type = o.resource_type
                AND e.resource_id = o.resource_id
                AND e.id < o.id
                AND (e.next_attempt_at > o.next_attempt_at
                     OR (e.lease_expires_at IS NOT NULL AND e.lease_expires_at >= now()
                         AND NOT (e.lease_owner LIKE 'live:%'
                                  AND hashtext(e.lease_owner)::oid NOT IN
                                      (SELECT objid FROM live))))
          )
        ORDER BY o.next_attempt_at, o.id
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    ), claimed AS (
        SELECT c.id FROM candidates c
        WHERE NOT EXISTS (
            SELECT 1 FROM bridge_outbox e
            WHERE e.status = 'pending'
              AND {record_key_sql("e")} = {record_key_sql("c")}
              AND e.resource_type = c.resource_type
              AND e.resource_id = c.resource_id
              AND e.id < c.id
              AND e.id NOT IN (SELECT id FROM candidates)
        )
    )
    UPDATE bridge_outbox o
       SET lease_owner = :owner, lease_expires_at = now() + make_interval(secs => :lease)
      FROM claimed c
     WHERE o.id = c.id
    RETURNING o.id, o.event_id, o.subject, o.event_type, o.resource_type, o.resource_id,
              NULLIF(o.headers, '{{}}'::jsonb)::text AS headers,
              o.body::text AS body, o.attempts, o.next_attempt_at
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
# A chain stopped by its failed head: its later rows become due with the head's retry,
# not before it, so the next claim takes the whole chain again (the claim refuses a row
# whose earlier pending row is due later than it).
_RELEASE_CHAIN = text(
    f"""
    UPDATE bridge_outbox o
       SET lease_owner = NULL, lease_expires_at = NULL,
           next_attempt_at = GREATEST(o.next_attempt_at, COALESCE((
               SELECT max(e.next_attempt_at) FROM bridge_outbox e
                WHERE e.status = 'pending' AND {record_key_sql("e")} = {record_key_sql("o")}
                  AND e.resource_type = o.resource_type
                  AND e.resource_id = o.resource_id AND e.id < o.id), o.next_attempt_at))
     WHERE o.id = ANY(CAST(:ids AS bigint[])) AND o.lease_owner = :owner
    """
)
# Renewal locks with SKIP LOCKED: a row locked right now is being settled (or claimed
# after its lease expired), and waiting for it could deadlock with that transaction.
_RENEW = text(
    """
    UPDATE bridge_outbox o SET lease_expires_at = now() + make_interval(secs => :lease)
      FROM (SELECT id FROM bridge_outbox
             WHERE id = ANY(CAST(:ids AS bigint[])) AND lease_owner = :owner
               AND status = 'pending'
             ORDER BY id FOR UPDATE SKIP LOCKED) AS r
     WHERE o.id = r.id
    """
)
_FAIL = text(
    """
    UPDATE bridge_outbox o
       SET attempts = o.attempts + 1,
           last_error = v.error,
           next_attempt_at = now() + make_interval(secs => v.delay),
           status = CASE WHEN v.rejected AND o.attempts + 1 >= :max_attempts
                         THEN 'failed' ELSE 'pending' END,
           lease_owner = NULL, lease_expires_at = NULL
      FROM unnest(CAST(:ids AS bigint[]), CAST(:errors AS text[]), CAST(:delays AS float8[]),
                  CAST(:rejected AS boolean[]))
           AS v(id, error, delay, rejected)
     WHERE o.id = v.id AND o.lease_owner = :owner
    RETURNING o.id, o.status
    """
)
_PURGE = text(
    """
    DELETE FROM bridge_outbox WHERE id IN (
        SELECT id FROM bridge_outbox
         WHERE status = 'sent' AND sent_at < now() - make_interval(secs => :age)
         LIMIT :chunk)
    """
)


class ClaimedRow(NamedTuple):
    """An outbox row leased to this relay, ready to publish.

    A named tuple, not a frozen dataclass: a claim builds a thousand at a time, and a
    frozen dataclass sets each field through ``object.__setattr__`` (a visible cost
    per event)."""

    id: int
    event_id: str
    subject: str
    resource_key: tuple[str, str]
    #: Stored headers other than ``Nats-Msg-Id``; ``None`` when there are none (the
    #: common case: a tuple of atomic values the cyclic collector can stop tracking).
    headers: Mapping[str, str] | None
    body: bytes
    attempts: int

    @property
    def payload(self) -> Mapping[str, Any]:
        """The stored envelope, decoded (for inspection; publishing sends ``body``)."""
        decoded: Mapping[str, Any] = json.loads(self.body)
        return decoded


@dataclass(frozen=True, slots=True)
class Failure:
    """A failed publish of a claimed row and the delay before its next attempt."""

    row: ClaimedRow
    error: str
    delay: float
    #: The server refused the message itself (:attr:`bridge.errors.PublishError.rejected`):
    #: only such failures count towards ``max_attempts``.
    rejected: bool = False


class OutboxStore:
    """SQL of the relay on one database (module doc: claim order and settle rules)."""

    def __init__(self, engine: AsyncEngine, *, owner: str, lease: float, max_attempts: int):
        self._engine = engine
        self.owner = owner
        self.cursor = ClaimCursor()  # where claims resume (bridge.outbox._cursor)
        self._lease = lease
        self._max_attempts = max_attempts

    @contextlib.asynccontextmanager
    async def _transaction(self, what: str) -> AsyncIterator[AsyncConnection]:
        """``engine.begin()`` bounded by the lease (module doc, "Dead connections")."""
        async with Deadline(self._lease, f"outbox {what}"), self._engine.begin() as conn:
            yield conn

    async def claim(self, limit: int) -> list[ClaimedRow]:
        """Lease up to ``limit`` claimable rows to this owner; returned in id order."""
        try:
            async with self._transaction("claim") as conn:
                await conn.execute(_LOCK, {"key": CLAIM_LOCK_KEY})
                after = self.cursor.after()  # after the lock: the previous claim set it
                records = await self._claim_from(conn, after, limit)
                full = len(records) == limit
                if after is not None and 0 < len(records) < limit:
                    # the backlog after the cursor ran out: rows behind it go now (this
                    # transaction sees its own leases); not after an empty claim (all in
                    # flight, likely behind it too): the next claim scans from the start
                    records += await self._claim_from(conn, None, limit - len(records))
                # before the commit releases the lock to the next claim
                # (next_attempt_at, id): the last and first column of _CLAIM's RETURNING
                self.cursor.advance([(r[-1], r[0]) for r in records], full)
        except BaseException:
            self.cursor.reset()
            raise
        # tuples, unpacked in _CLAIM's RETURNING order: 1000 rows a claim, per event
        rows = [
            ClaimedRow(
                id=row_id,
                event_id=str(event_id),
                subject=subject,
                resource_key=(resource_type, resource_id),
                headers=json.loads(headers) if headers else None,
                body=published_body(
                    body,
                    event_id=str(event_id),
                    event_type=event_type,
                    resource_type=resource_type,
                    resource_id=resource_id,
                ),
                attempts=attempts,
            )
            for (
                row_id,
                event_id,
                subject,
                event_type,
                resource_type,
                resource_id,
                headers,
                body,
                attempts,
                _,
            ) in records
        ]
        rows.sort(key=lambda row: row.id)  # UPDATE ... RETURNING has no order
        return rows

    async def _claim_from(
        self, conn: AsyncConnection, after: Position | None, limit: int
    ) -> list[Sequence[Any]]:
        after_at, after_id = after or (_START, 0)
        result = await conn.execute(
            _CLAIM,
            {
                "limit": limit,
                "owner": self.owner,
                "lease": self._lease,
                "live_class": LIVENESS_LOCK_CLASS,
                "after_at": after_at,
                "after_id": after_id,
            },
        )
        rows: list[Sequence[Any]] = list(result.all())  # in _CLAIM's RETURNING order
        return rows

    async def settle(
        self,
        sent: Sequence[tuple[int, int]],
        failures: Sequence[Failure],
        released: Sequence[int],
    ) -> list[int]:
        """Record a batch's outcome in one transaction; return ids that became ``failed``."""
        if not (sent or failures or released):
            return []
        if failures or released:  # a released row keeps its place: behind the cursor
            self.cursor.reset()
        dead: list[int] = []
        async with self._transaction("settle") as conn:
            if sent:
                await conn.execute(
                    _MARK_SENT,
                    {
                        "ids": [row_id for row_id, _ in sent],
                        "seqs": [seq for _, seq in sent],
                        "owner": self.owner,
                    },
                )
            if failures:
                result = await conn.execute(
                    _FAIL,
                    {
                        "ids": [f.row.id for f in failures],
                        "errors": [f.error[:2000] for f in failures],
                        "delays": [f.delay for f in failures],
                        "rejected": [f.rejected for f in failures],
                        "max_attempts": self._max_attempts,
                        "owner": self.owner,
                    },
                )
                dead = [int(r.id) for r in result if r.status == "failed"]
            if released:  # after the failures: their heads' retry times are set
                await conn.execute(_RELEASE_CHAIN, {"ids": list(released), "owner": self.owner})
        return dead

    async def renew(self, ids: Sequence[int]) -> int:
        """Extend the lease of rows ``ids`` still leased to this owner by ``lease`` from
        now (rows locked by a concurrent settle are skipped); return rows renewed."""
        if not ids:
            return 0
        async with self._transaction("renew") as conn:
            result = await conn.execute(
                _RENEW, {"ids": list(ids), "owner": self.owner, "lease": self._lease}
            )
        return int(result.rowcount or 0)

    async def release(self, ids: Sequence[int]) -> int:
        """Clear the lease of rows ``ids`` still leased to this owner (claimable at once)."""
        if not ids:
            return 0
        self.cursor.reset()  # the rows are claimable again where they were
        async with self._transaction("release") as conn:
            result = await conn.execute(_RELEASE, {"ids": list(ids), "owner": self.owner})
        return int(result.rowcount or 0)

    async def counts(self) -> OutboxCounts:
        return await outbox_counts(self._engine)

    async def purge_sent(self, older_than: float, *, chunk: int = PURGE_CHUNK) -> int:
        """Delete sent rows older than ``older_than`` seconds, ``chunk`` rows per statement."""
        total = 0
        while True:
            async with self._transaction("purge") as conn:
                result = await conn.execute(_PURGE, {"age": older_than, "chunk": chunk})
            deleted = int(result.rowcount or 0)
            total += deleted
            if deleted < chunk:
                return total

    async def requeue_failed(self, ids: Sequence[int] | None = None) -> int:
        """``failed`` rows (all, or those in ``ids``) → pending, due now, attempts reset."""
        return await requeue(self._engine, None if ids is None else [int(i) for i in ids])
