"""SQL on the ``bridge_inbox`` table, used by :class:`~bridge.inbox.processor.InboxProcessor`.

Record life cycle: ``processed`` (claimed and committed with the handler's
writes), ``failed`` (not applied yet; will be redelivered at ``retry_at``),
``dead_lettered`` (stored in the DLQ).  ``processed`` and ``dead_lettered`` are final: nothing
here ever changes them, so a record can only be claimed from nothing or from
``failed``.

Every statement is built once with bind parameters, so SQLAlchemy's compiled
cache and asyncpg's prepared-statement cache are hit on every batch.  The claim
passes a batch as one array per column (``unnest``): ONE statement text whatever
the batch size (one prepared statement, a handful of parameters), which costs
about half the client CPU of a multi-row ``VALUES`` list with nine parameters
per row.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Interval, bindparam, func, literal_column, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from bridge.envelope import Envelope
from bridge.schema import INBOX_DEAD_LETTERED, INBOX_FAILED, INBOX_PROCESSED, inbox
from bridge.transport.delivery import Received

LAST_ERROR_LIMIT = 2000
#: ``(event_id, last_error, retry_in seconds)`` of a record going back to ``failed``.
Failure = tuple[str, str | None, float]
_COLUMNS = (
    "event_id",
    "subject",
    "event_type",
    "resource_type",
    "resource_id",
    "stream_seq",
    "status",
    "attempts",
    "last_error",
)


def inbox_row(
    envelope: Envelope,
    message: Received,
    status: str,
    *,
    attempts: int = 1,
    last_error: str | None = None,
) -> dict[str, Any]:
    """Bind parameters of one inbox record."""
    return {
        "event_id": envelope.event_id,
        "subject": message.subject,
        "event_type": envelope.event_type,
        "resource_type": envelope.resource_type,
        "resource_id": envelope.resource_id,
        "stream_seq": message.stream_seq,
        "status": status,
        "attempts": attempts,
        "last_error": None if last_error is None else last_error[:LAST_ERROR_LIMIT],
    }


def _literal(value: str) -> Any:
    # Literals, not bind parameters, outside the VALUES clause: SQLAlchemy can then
    # send many rows as ONE multi-row INSERT ("insertmanyvalues" batching).
    return literal_column(f"'{value}'")


# Claim = insert as ``processed`` or take back a ``failed`` record; final ones stay
# untouched and are not returned.  Rows are inserted in array order (ordinality),
# which the caller sorts by event id: overlapping claims lock rows in one order.
_CLAIM = text(
    f"""
    INSERT INTO {inbox.name} AS i
           (event_id, subject, event_type, resource_type, resource_id, stream_seq,
            status, attempts, last_error, processed_at)
    SELECT v.event_id, v.subject, v.event_type, v.resource_type, v.resource_id,
           v.stream_seq, '{INBOX_PROCESSED}', 1, NULL, now()
      FROM unnest(CAST(:event_ids AS uuid[]), CAST(:subjects AS text[]),
                  CAST(:event_types AS text[]), CAST(:resource_types AS text[]),
                  CAST(:resource_ids AS text[]), CAST(:stream_seqs AS bigint[]))
           WITH ORDINALITY
           AS v(event_id, subject, event_type, resource_type, resource_id, stream_seq, n)
     ORDER BY v.n
    ON CONFLICT (event_id) DO UPDATE
       SET status = '{INBOX_PROCESSED}', attempts = i.attempts + 1, last_error = NULL,
           stream_seq = excluded.stream_seq, processed_at = now()
     WHERE i.status = '{INBOX_FAILED}'
    RETURNING i.event_id
    """
)


def _record_statement() -> Any:
    insert = pg_insert(inbox).values({col: bindparam(col) for col in _COLUMNS})
    return insert.on_conflict_do_update(
        index_elements=[inbox.c.event_id],
        set_={
            "status": insert.excluded.status,
            "last_error": insert.excluded.last_error,
            "stream_seq": insert.excluded.stream_seq,
        },
        where=inbox.c.status == _literal(INBOX_FAILED),
    )


_RECORD = _record_statement()
# clock_timestamp(), not now(): now() is when the batch's transaction began, and the
# NAK that schedules the redelivery is sent after it commits.
_MARK_FAILED = (
    update(inbox)
    .where(inbox.c.event_id == bindparam("id"), inbox.c.status == INBOX_PROCESSED)
    .values(
        status=INBOX_FAILED,
        attempts=inbox.c.attempts + bindparam("attempt_delta"),
        last_error=bindparam("error"),
        processed_at=None,
        retry_at=func.clock_timestamp() + bindparam("retry_in", type_=Interval()),
    )
)
_FINAL = (INBOX_PROCESSED, INBOX_DEAD_LETTERED)


async def claim(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> set[str]:
    """Claim records as ``processed`` in one statement; return the event ids claimed.

    ``rows`` come from :func:`inbox_row`, one per event id.  An event whose record
    is already final is not returned (a duplicate).  Rows are written in event-id
    order, so two replicas claiming overlapping batches lock rows in the same order
    (no deadlock); a record another transaction has claimed but not committed
    makes this wait for that transaction.  Ids are returned as the caller spelled
    them (an upper-case UUID is the same record as its lower-case form).
    """
    if not rows:
        return set()
    by_id: dict[str, dict[str, Any]] = {}
    for row in rows:  # one row per record: the first spelling of an id wins
        by_id.setdefault(_canonical(row["event_id"]), row)
    ordered = [by_id[event_id] for event_id in sorted(by_id)]
    result = await session.execute(
        _CLAIM,
        {
            "event_ids": sorted(by_id),
            "subjects": [row["subject"] for row in ordered],
            "event_types": [row["event_type"] for row in ordered],
            "resource_types": [row["resource_type"] for row in ordered],
            "resource_ids": [row["resource_id"] for row in ordered],
            "stream_seqs": [row["stream_seq"] for row in ordered],
        },
    )
    return {str(by_id[str(event_id)]["event_id"]) for (event_id,) in result}


def _canonical(event_id: object) -> str:
    """The form PostgreSQL returns a ``uuid`` in (lower case, hyphenated)."""
    return str(uuid.UUID(str(event_id)))


async def mark_failed(
    session: AsyncSession, failures: Iterable[Failure], *, ran: bool = True
) -> None:
    """Turn claimed records back to ``failed`` with ``(event_id, last_error, retry_in)``.

    ``retry_in``: seconds until the delivery comes back (its NAK delay), stored as
    ``retry_at`` for :func:`waiting`.  ``ran=False`` (held back without running) also
    takes back the attempt the claim counted, so ``attempts`` stays the number of
    handler runs.
    """
    params = [
        {
            "id": event_id,
            "error": error,
            "attempt_delta": 0 if ran else -1,
            "retry_in": timedelta(seconds=max(retry_in, 0.0)),
        }
        for event_id, error, retry_in in failures
    ]
    if params:
        await session.execute(_MARK_FAILED, params)


@dataclass(frozen=True, slots=True)
class Waiting:
    """A ``failed`` record whose delivery is still to come back (see :func:`waiting`)."""

    event_id: str  # lower-case, hyphenated (as PostgreSQL returns a uuid)
    stream_seq: int | None
    retry_in: float  # seconds until its redelivery is due (negative: overdue)


_WAITING = text(
    f"""
    SELECT i.event_id, i.resource_type, i.resource_id, i.stream_seq,
           CAST(EXTRACT(EPOCH FROM i.retry_at - clock_timestamp()) AS float8)
      FROM {inbox.name} AS i
      JOIN unnest(CAST(:resource_types AS text[]), CAST(:resource_ids AS text[]))
           AS k(resource_type, resource_id)
        ON i.resource_type = k.resource_type AND i.resource_id = k.resource_id
     WHERE i.status = '{INBOX_FAILED}'
       AND i.retry_at > clock_timestamp() - make_interval(secs => :stale)
    """
)


async def waiting(
    session: AsyncSession, resources: Iterable[tuple[str, str]], *, stale_after: float
) -> dict[tuple[str, str], list[Waiting]]:
    """``failed`` records of ``resources`` ((resource_type, resource_id) pairs) that
    still wait for their redelivery, by resource.

    One statement over the partial index of ``failed`` records.  A record whose
    ``retry_at`` passed more than ``stale_after`` seconds ago is not waited for any
    more (its redelivery would have come: the server gave up on it, or no consumer
    ran); one without ``retry_at`` (failed before the column existed) neither.
    """
    keys = sorted(set(resources))
    if not keys:
        return {}
    result = await session.execute(
        _WAITING,
        {
            "resource_types": [resource_type for resource_type, _ in keys],
            "resource_ids": [resource_id for _, resource_id in keys],
            "stale": stale_after,
        },
    )
    found: dict[tuple[str, str], list[Waiting]] = {}
    for event_id, resource_type, resource_id, stream_seq, retry_in in result:
        found.setdefault((resource_type, resource_id), []).append(
            Waiting(str(event_id), stream_seq, float(retry_in))
        )
    return found


async def record(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """Insert records, or update ``failed`` ones to the given status (final ones stay)."""
    if rows:
        await session.execute(_RECORD, list(rows))


async def is_final(session: AsyncSession, event_id: str) -> bool:
    status = await session.scalar(select(inbox.c.status).where(inbox.c.event_id == event_id))
    return status in _FINAL


_PURGE_SETTLED = text(
    f"""
    DELETE FROM {inbox.name} WHERE event_id IN (
        SELECT event_id FROM {inbox.name}
         WHERE (status = '{INBOX_PROCESSED}'
                AND processed_at < now() - make_interval(secs => :age))
            OR (status = '{INBOX_DEAD_LETTERED}'
                AND received_at < now() - make_interval(secs => :age))
         LIMIT :chunk)
    """
)


async def purge_settled(session: AsyncSession, older_than: float, chunk: int) -> int:
    """Delete up to ``chunk`` final records settled more than ``older_than`` seconds ago.

    ``processed`` records by ``processed_at``, ``dead_lettered`` ones by ``received_at``;
    ``failed`` records (still to be redelivered) are never deleted.  The caller commits.
    """
    result = await session.execute(_PURGE_SETTLED, {"age": older_than, "chunk": chunk})
    return int(getattr(result, "rowcount", 0) or 0)


async def counts_by_status(session: AsyncSession) -> dict[str, int]:
    rows = await session.execute(select(inbox.c.status, func.count()).group_by(inbox.c.status))
    return {str(status): int(n) for status, n in rows}
