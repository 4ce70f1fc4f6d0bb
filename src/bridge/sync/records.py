"""Where last-writer-wins reports by default: the bridge's own tables
``bridge_sync_stale_events`` and ``bridge_sync_conflicts`` (:mod:`bridge.schema`).

- :func:`record_stale` (``on_stale``): one row per stale event, in the handler's
  session — committed with the inbox record, rolled back with it.
- :func:`record_conflict` (``on_conflict``): one row per conflicting event, in a
  transaction of its own on the session's engine, because the handler's transaction
  is rolled back when it rejects the event.

Keyed by the event id (``ON CONFLICT DO NOTHING``): a redelivery records nothing more.
Keys are written as text (a composite key's parts joined by ``:``, as ``resource_id``
is) and versions and rows as JSON (:func:`bridge.sync.convert.to_json`), so one table
fits models of every key type.  :func:`sync_record_counts` gives the totals for a
status document.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from bridge.keys import PrimaryKey
from bridge.schema import sync_conflicts, sync_stale_events
from bridge.sync.convert import to_json

if TYPE_CHECKING:
    from bridge.sync.lww import Conflict, Stale


def key_text(value: Any) -> str:
    """A key as text, by the ``resource_id`` rule (:meth:`bridge.keys.PrimaryKey.resource_id`)."""
    return PrimaryKey.resource_id(value if isinstance(value, tuple) else (value,))


async def record_stale(session: AsyncSession, stale: Sequence[Stale]) -> None:
    """``on_stale``: a ``bridge_sync_stale_events`` row per event (module doc)."""
    rows = {
        each.envelope.event_id: {
            "event_id": each.envelope.event_id,
            "resource_type": each.envelope.resource_type,
            "resource_id": key_text(each.record_id)[:255],
            "producer": each.envelope.producer,
            "incoming_version": to_json(dict(each.incoming)),
            "local_version": to_json(dict(each.local)),
        }
        for each in stale
    }
    await session.execute(
        pg_insert(sync_stale_events).values(list(rows.values())).on_conflict_do_nothing()
    )


async def record_conflict(session: AsyncSession, conflict: Conflict) -> None:
    """``on_conflict``: a ``bridge_sync_conflicts`` row, in its own transaction."""
    synced, envelope = conflict.table, conflict.envelope
    row = {
        "event_id": envelope.event_id,
        "resource_type": envelope.resource_type,
        "key_name": ",".join(conflict.key),
        "key_value": key_text(tuple(conflict.values[name] for name in conflict.key)),
        "local_id": key_text(synced.record_id(conflict.holder)),
        "incoming_id": key_text(synced.record_id(conflict.values)),
        "incoming_origin": envelope.producer,
        "local_values": json_row(conflict.holder),
        "incoming_values": dict(envelope.payload),
    }
    async with engine_of(session).begin() as conn:
        await conn.execute(pg_insert(sync_conflicts).values(**row).on_conflict_do_nothing())


def json_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row's columns as JSON values."""
    return {str(name): to_json(value) for name, value in row.items()}


def engine_of(session: AsyncSession) -> AsyncEngine:
    """The engine ``session`` is bound to (a transaction of its own runs there)."""
    bind = session.bind
    if isinstance(bind, AsyncEngine):
        return bind
    if isinstance(bind, AsyncConnection):
        return bind.engine
    raise TypeError("the handler's session is bound to no engine")


async def sync_record_counts(connection: AsyncConnection) -> dict[str, int]:
    """``{"conflicts": n, "stale_events": n}`` from the bridge's tables."""
    row = (
        await connection.execute(
            select(
                select(func.count()).select_from(sync_conflicts).scalar_subquery(),
                select(func.count()).select_from(sync_stale_events).scalar_subquery(),
            )
        )
    ).one()
    return {"conflicts": int(row[0]), "stale_events": int(row[1])}
