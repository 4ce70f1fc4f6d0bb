"""The ``resource_id`` of a synced row: one text rule for every primary key type.

Contract (docs/ARCHITECTURE.md, "Capture"):

- single-column key → the key's PostgreSQL text form (``key::text``): ``42``,
  ``3f1c...-...`` (UUID, lower case), ``SKU-1``;
- composite key → the key values as a JSON array in PostgreSQL's ``jsonb`` text form,
  columns in primary key order: ``jsonb_build_array(k1, k2, ...)::text`` →
  ``[7, "EU"]`` (``jsonb`` writes ``", "`` between items and does not escape
  non-ASCII characters).

The capture trigger computes it in SQL (:func:`resource_id_sql`); Python code that
must name the same record (backfill, reconciliation, tests) uses
:func:`resource_id_of` on the key's values, which produces the same text for the
types PostgreSQL and Python agree on (integers, text, UUIDs, booleans).  The text
must fit ``bridge_outbox.resource_id`` (255 characters): a longer key makes the
writing statement fail rather than commit a change without its event.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Column, Table

from bridge.errors import ConfigError


def key_columns(table: Table) -> tuple[Column[Any], ...]:
    """The primary key columns of ``table``, in key order; ConfigError without one."""
    columns = tuple(table.primary_key.columns)
    if not columns:
        raise ConfigError(f"table {table.name!r} has no primary key: a synced table needs one")
    return columns


def quote_ident(name: str) -> str:
    """``name`` as a PostgreSQL quoted identifier."""
    return '"' + name.replace('"', '""') + '"'


def resource_id_sql(table: Table, row: str = "NEW") -> str:
    """The SQL expression of a row's ``resource_id`` (module doc), ``row`` being the
    record variable or alias holding it (``NEW``, ``OLD``, ``t``)."""
    columns = key_columns(table)
    if len(columns) == 1:
        return f"({row}.{quote_ident(columns[0].name)})::text"
    items = ", ".join(f"{row}.{quote_ident(c.name)}" for c in columns)
    return f"jsonb_build_array({items})::text"


def resource_id_of(values: Sequence[Any]) -> str:
    """The ``resource_id`` of a row whose primary key values are ``values`` (module doc)."""
    if len(values) == 1:
        value = values[0]
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)
    return json.dumps([_json_item(v) for v in values], ensure_ascii=False)


def _json_item(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    return value
