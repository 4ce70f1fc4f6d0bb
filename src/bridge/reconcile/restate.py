"""Re-stating rows as they are now through the outbox — what backfill and
reconciliation's re-emits write.

:func:`snapshot_query` selects a model's instances together with their
``resource_id``, computed by PostgreSQL from the key's rule
(:meth:`bridge.keys.PrimaryKey.resource_id_sql`, the same text a capture trigger
writes); :func:`write_snapshots` writes one outbox row per instance in the caller's
transaction through the table's capture function, action ``updated`` (a tombstone:
``deleted``), the payload the row with its stored version — so a receiver that applies
last-writer-wins treats a re-stated row it holds as the same version and never lets it
overwrite newer data.

The rows wake relays through the outbox table's NOTIFY trigger on commit
(:data:`bridge.schema.OUTBOX_NOTIFY_DDL`), in this process and others alike.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Select, String, Table, inspect, literal_column, select
from sqlalchemy.ext.asyncio import AsyncSession

from bridge.errors import ConfigError
from bridge.keys import PrimaryKey, table_sql
from bridge.outbox.capture import Outbox, Synced

#: The label of the computed ``resource_id`` in :func:`snapshot_query`.
RESOURCE_ID = "bridge_resource_id"


def model_table(model: type[Synced]) -> Table:
    """The table ``model`` is mapped to (:class:`ConfigError` otherwise)."""
    table = inspect(model).local_table
    if not isinstance(table, Table):
        raise ConfigError(f"{model.__name__} is not mapped to a table")
    return table


def snapshot_query(model: type[Synced]) -> Select[Synced, str]:
    """``SELECT <model>, <resource_id>`` from the model's table (add WHERE, ORDER BY)."""
    table = model_table(model)
    rid = PrimaryKey(table).resource_id_sql(table_sql(table))
    return select(model, literal_column(rid, String()).label(RESOURCE_ID))


async def write_snapshots(
    session: AsyncSession, outbox: Outbox, rows: Sequence[tuple[Synced, str]]
) -> int:
    """One outbox row per ``(instance, resource_id)`` of :func:`snapshot_query`, written by
    the table's capture function (:meth:`Outbox.emit_snapshots`: the same SQL as the
    capture trigger, so payload and ``resource_id`` follow one rule); returns the count."""
    return await outbox.emit_snapshots(session, [instance for instance, _ in rows])
