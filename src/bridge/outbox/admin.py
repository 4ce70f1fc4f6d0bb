"""Outbox queries for operators and the relay: counts, listing, re-queueing, purging.

Plain functions over an engine, so the ``bridge`` CLI can use them without a NATS
connection; :class:`~bridge.outbox.relay.OutboxRelay` delegates to them as well.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

_COUNTS = text(
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
class OutboxCounts:
    pending: int
    sent: int
    failed: int
    retried: int
    oldest_pending_age_seconds: float | None


async def outbox_counts(engine: AsyncEngine) -> OutboxCounts:
    async with engine.connect() as conn:
        row = (await conn.execute(_COUNTS)).mappings().one()
    age = row["oldest_pending_age"]
    return OutboxCounts(
        pending=int(row["pending"]),
        sent=int(row["sent"]),
        failed=int(row["failed"]),
        retried=int(row["retried"]),
        oldest_pending_age_seconds=float(age) if age is not None else None,
    )


async def list_rows(
    engine: AsyncEngine, *, status: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """Outbox rows (newest first), without payloads."""
    where = "WHERE status = :status" if status else ""
    async with engine.connect() as conn:
        result = await conn.execute(
            text(
                "SELECT id, event_id, event_type, resource_type, resource_id, status, attempts, "
                "next_attempt_at, last_error, created_at, sent_at, stream_seq "
                f"FROM bridge_outbox {where} ORDER BY id DESC LIMIT :limit"
            ),
            {"status": status, "limit": limit} if status else {"limit": limit},
        )
        return [dict(r) for r in result.mappings()]


async def requeue(engine: AsyncEngine, ids: Sequence[int] | None = None) -> int:
    """Put ``failed`` rows (all, or ``ids``) back to pending, attempts reset."""
    where = "status = 'failed'"
    params: dict[str, Any] = {}
    if ids is not None:
        where += " AND id = ANY(CAST(:ids AS bigint[]))"
        params["ids"] = list(ids)
    async with engine.begin() as conn:
        result = await conn.execute(
            text(
                "UPDATE bridge_outbox SET status = 'pending', attempts = 0, "
                f"next_attempt_at = now(), last_error = NULL WHERE {where}"
            ),
            params,
        )
    return int(result.rowcount or 0)


async def purge(engine: AsyncEngine, *, older_than: float, status: str = "sent") -> int:
    """Delete rows in ``status`` (``sent`` or ``failed``) older than ``older_than`` seconds."""
    if status not in ("sent", "failed"):
        raise ValueError("only sent or failed outbox rows can be purged")
    column = "sent_at" if status == "sent" else "created_at"
    async with engine.begin() as conn:
        result = await conn.execute(
            text(
                f"DELETE FROM bridge_outbox WHERE status = :status "
                f"AND {column} < now() - make_interval(secs => :age)"
            ),
            {"status": status, "age": older_than},
        )
    return int(result.rowcount or 0)
