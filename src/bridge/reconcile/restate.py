"""Re-stating rows as they are now through the outbox — what backfill and
reconciliation's re-emits write.

:func:`snapshot_query` selects a model's instances together with their
``resource_id``, computed by PostgreSQL from the key's rule
(:meth:`bridge.keys.PrimaryKey.resource_id_sql`, the same text a capture trigger
writes); :func:`write_snapshots` writes one outbox row per instance in the caller's
transaction, action ``bridge_action("updated")`` (a tombstone: ``deleted``), the
payload the instance's snapshot with its stored version — so a receiver that applies
last-writer-wins treats a re-stated row it holds as the same version and never lets it
overwrite newer data.

The rows wake relays through the outbox table's NOTIFY trigger on commit
(:data:`bridge.schema.OUTBOX_NOTIFY_DDL`), in this process and others alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from sqlalchemy import Select, String, Table, insert, inspect, literal_column, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from bridge.errors import ConfigError
from bridge.keys import PrimaryKey
from bridge.outbox.capture import Outbox, Synced
from bridge.schema import outbox as outbox_table

#: The label of the computed ``resource_id`` in :func:`snapshot_query`.
RESOURCE_ID = "bridge_resource_id"
_QUOTE = postgresql.dialect().identifier_preparer.quote  # type: ignore[no-untyped-call]


def model_table(model: type[Synced]) -> Table:
    """The table ``model`` is mapped to (:class:`ConfigError` otherwise)."""
    table = inspect(model).local_table
    if not isinstance(table, Table):
        raise ConfigError(f"{model.__name__} is not mapped to a table")
    return table


def table_sql(table: Table) -> str:
    """The table's quoted (schema-qualified) name, as SQL."""
    name = _QUOTE(table.name)
    return f"{_QUOTE(table.schema)}.{name}" if table.schema else name


def snapshot_query(model: type[Synced]) -> Select[Synced, str]:
    """``SELECT <model>, <resource_id>`` from the model's table (add WHERE, ORDER BY)."""
    table = model_table(model)
    rid = PrimaryKey(table).resource_id_sql(table_sql(table))
    return select(model, literal_column(rid, String()).label(RESOURCE_ID))


async def write_snapshots(
    session: AsyncSession, outbox: Outbox, rows: Sequence[tuple[Synced, str]]
) -> int:
    """One outbox row per ``(instance, resource_id)`` (module doc); returns the count."""
    values = [
        outbox.row_for(
            dataclasses.replace(
                outbox.envelope_for(instance, instance.bridge_action("updated")),
                resource_id=resource_id,
            )
        )
        for instance, resource_id in rows
    ]
    if values:
        await session.execute(insert(outbox_table), values)
    return len(values)
