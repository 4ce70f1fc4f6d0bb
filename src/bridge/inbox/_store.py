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
# The same statement reads the ``failed`` records of the batch's resources that still
# wait for a redelivery (``waiting``, over the partial index of failed records): every
# part of one statement sees the snapshot taken before the insert, so this is what
# was failed BEFORE the claim took the batch's own records back, in no extra round
# trip.  What comes back is what was NOT claimed (a final record: a duplicate), with a
# NULL resource_type, which waiting rows never have: usually nothing, where returning
# the claimed ids would cost the client a row per delivery.
# Its WHERE clause also sets two settings for the rest of the batch's transaction, as SET
# LOCAL would, in no extra round trip (an uncorrelated sub-select: a one-time filter,
# run once per execution before the first row, not once per row):
# bridge.capture = off, so the capture triggers write nothing for the handlers' changes
# (applying a peer's change must not echo it; bridge.outbox.capture), and
# plan_cache_mode = force_custom_plan: the handlers'
# prepared statements are then planned with their parameters on each execution, never
# with a generic plan cached while their tables were small.  Why: a consumer filling
# empty tables (a new service, a backfill) had its generic plans chosen as sequential
# scans on a few hundred rows and kept them at 100 000 rows, so its per-event cost grew
# with the table (docs/BENCHMARKS.md, "Flat with size").
_CLAIM = text(
    f"""
    WITH waiting AS (
        SELECT w.event_id, w.resource_type, w.resource_id, w.stream_seq,
               CAST(EXTRACT(EPOCH FROM w.retry_at - clock_timestamp()) AS float8) AS retry_in
          FROM {inbox.name} AS w
         WHERE w.status = '{INBOX_FAILED}'
           AND w.retry_at > clock_timestamp() - make_interval(secs => :stale)
           AND (w.resource_type, w.resource_id) IN (
               SELECT * FROM unnest(CAST(:resource_types AS text[]),
                                    CAST(:resource_ids AS text[])))
    ), claimed AS (
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
         WHERE (SELECT set_config('bridge.capture', 'off', true)
                    || set_config('plan_cache_mode', 'force_custom_plan', true)) IS NOT NULL
         ORDER BY v.n
        ON CONFLICT (event_id) DO UPDATE
           SET status = '{INBOX_PROCESSED}', attempts = i.attempts + 1, last_error = NULL,
               stream_seq = excluded.stream_seq, processed_at = now()
         WHERE i.status = '{INBOX_FAILED}'
        RETURNING i.event_id
    )
    SELECT u.event_id, NULL::text, NULL::text, NULL::bigint, NULL::float8
      FROM unnest(CAST(:event_ids AS uuid[])) AS u(event_id)
     WHERE u.event_id NOT IN (SELECT event_id FROM claimed)
    UNION ALL
    SELECT event_id, resource_type, resource_id, stream_seq, retry_in FROM waiting
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


@dataclass(frozen=True, slots=True)
class Waiting:
    """A ``failed`` record whose delivery is still to come back (see :func:`waiting`)."""

    event_id: str  # lower-case, hyphenated (as PostgreSQL returns a uuid)
    stream_seq: int | None
    retry_in: float  # seconds until its redelivery is due (negative: overdue)


#: What :func:`claim` found: the event ids claimed, and the ``failed`` records of the
#: batch's resources still waiting for their redelivery, by (resource_type, resource_id).
Claimed = tuple[set[str], dict[tuple[str, str], list[Waiting]]]


async def claim(
    session: AsyncSession, deliveries: Iterable[tuple[Envelope, Received]], *, stale_after: float
) -> Claimed:
    """Claim the records of a batch as ``processed`` in ONE statement; see :data:`Claimed`.

    The statement also turns capture off for the rest of the transaction
    (``bridge.capture = 'off'``, as :func:`bridge.outbox.capture.ensure_capture_off`
    does) whenever there is a delivery to claim; the caller turns it off itself
    when ``deliveries`` is empty.

    An event whose record is already final is not returned (a duplicate).  The same
    event twice is claimed once (the first delivery's subject and sequence are
    stored).  Rows are written in event-id order, so two replicas claiming
    overlapping batches lock rows in the same order (no deadlock); a record another
    transaction has claimed but not committed makes this wait for that transaction.
    Ids are returned as the caller spelled them (an upper-case UUID is the same
    record as its lower-case form).

    Waiting records are read from the snapshot before the claim (the batch's own
    ``failed`` records included), over the partial index of ``failed`` records.  A
    record whose ``retry_at`` passed more than ``stale_after`` seconds ago is not
    waited for any more (its redelivery would have come: the server gave up on it,
    or no consumer ran); one without ``retry_at`` (failed before the column
    existed) neither.
    """
    by_id: dict[str, tuple[Envelope, Received]] = {}
    for envelope, message in deliveries:  # one row per record: the first spelling wins
        by_id.setdefault(_canonical(envelope.event_id), (envelope, message))
    if not by_id:
        return set(), {}
    event_ids = sorted(by_id)
    ordered = [by_id[event_id] for event_id in event_ids]
    result = await session.execute(
        _CLAIM,
        {
            "event_ids": event_ids,
            "subjects": [message.subject for _, message in ordered],
            "event_types": [envelope.event_type for envelope, _ in ordered],
            "resource_types": [envelope.resource_type for envelope, _ in ordered],
            "resource_ids": [envelope.resource_id for envelope, _ in ordered],
            "stream_seqs": [message.stream_seq for _, message in ordered],
            "stale": stale_after,
        },
    )
    final: set[str] = set()  # not claimed: already processed or dead-lettered
    found: dict[tuple[str, str], list[Waiting]] = {}
    for event_id, resource_type, resource_id, stream_seq, retry_in in result:
        if resource_type is None:
            final.add(str(event_id))
        else:
            found.setdefault((resource_type, resource_id), []).append(
                Waiting(str(event_id), stream_seq, float(retry_in))
            )
    claimed = {envelope.event_id for key, (envelope, _) in by_id.items() if key not in final}
    return claimed, found


def _canonical(event_id: str) -> str:
    """The form PostgreSQL returns a ``uuid`` in (lower case, hyphenated).

    A decoded envelope's id is already in the standard 8-4-4-4-12 form
    (:meth:`bridge.envelope.Envelope.from_dict`), which only needs lower-casing;
    anything else goes through :class:`uuid.UUID` (and fails the batch if it is none).
    """
    if len(event_id) == 36 and event_id[8] == event_id[13] == event_id[18] == "-":
        return event_id.lower()
    return str(uuid.UUID(event_id))


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
