"""A synced model's primary key: the ``resource_id`` rule, the key types reconciliation
compares, and key values as they travel in reconciliation requests.

**resource_id** (the envelope's and the outbox row's): a single-column key → the key's
text as PostgreSQL writes it (``col::text``: ``42``, ``6b7e…-…``, ``sku-1``); a composite
key → ``jsonb_build_array(k1, k2, ...)::text`` (``[42, "sku-1"]``).  The rule is written
once, as SQL (:meth:`PrimaryKey.resource_id_sql`), so every writer of outbox rows —
backfill, reconciliation's re-emits, a capture trigger — produces the same text.

**Key kinds** reconciliation supports (:meth:`PrimaryKey.unsupported` names the rest):

- ``integer``: ``smallint``, ``integer``, ``bigint`` — a JSON number, checked against the
  column's range;
- ``uuid`` — a JSON string, canonical lowercase hyphenated form;
- ``text``: any character type (``varchar``, ``text``, ``char``) — a JSON string of at
  most :data:`MAX_TEXT_CHARS` characters (the width of ``resource_id``), no NUL;
- composite keys of these, up to :data:`MAX_KEY_PARTS` columns.

**Order.**  Reconciliation cuts a table into key ranges that *both* databases must read
the same way, so text is compared ``COLLATE "C"`` (byte order of UTF-8 = code point
order) on both sides, never by the column's own collation: two databases may have
different collations, and the same collation name may sort differently across C
library or ICU versions — a range cut by one side's order could then hold other rows
on the other side, and a row could fall between two ranges and never be compared.
"C" is the one order every PostgreSQL agrees on, and Python's ``str`` comparison is
the same order, so bounds can be checked without a database.  Integers and UUIDs
(byte order) have one order anyway.  The cost: an index on a text key with another
collation does not serve ``COLLATE "C"`` comparisons — declare the key column
``COLLATE "C"`` or add an index on ``(key COLLATE "C")`` for large tables.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Column, Enum, Integer, SmallInteger, String, Table, Uuid
from sqlalchemy.dialects import postgresql

from bridge.errors import ConfigError

KIND_INTEGER = "integer"
KIND_UUID = "uuid"
KIND_TEXT = "text"
#: Columns a reconciled key may have.
MAX_KEY_PARTS = 8
#: Characters of one text key part (``resource_id`` is a varchar(255)).
MAX_TEXT_CHARS = 255
#: One part of a key value: an integer, or a string (UUID, text).
KeyPartValue = int | str
#: A key value, one element per primary key column, in key order.
Key = tuple[KeyPartValue, ...]

_INT_BITS = {SmallInteger: 16, BigInteger: 64, Integer: 32}
_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]


def quote_ident(name: str) -> str:
    """``name`` as a PostgreSQL quoted identifier (always quoted: any name is safe)."""
    return '"' + name.replace('"', '""') + '"'


def table_sql(table: Table) -> str:
    """``table``'s quoted, schema-qualified name as SQL."""
    name = quote_ident(table.name)
    return f"{quote_ident(table.schema)}.{name}" if table.schema else name


def key_columns(table: Table) -> tuple[Column[Any], ...]:
    """The primary key columns of ``table``, in key order; ConfigError without one."""
    columns = tuple(table.primary_key.columns)
    if not columns:
        raise ConfigError(f"table {table.name!r} has no primary key: a synced table needs one")
    return columns


@dataclass(frozen=True, slots=True)
class KeyPart:
    """One primary key column: its name, its kind (``None``: not supported by
    reconciliation) and, for integers, the column's range."""

    name: str
    kind: str | None
    type_name: str
    low: int = 0
    high: int = 0

    def parse(self, value: Any) -> KeyPartValue:
        """A JSON value of this part, checked; :class:`ValueError` names what is wrong."""
        if self.kind == KIND_INTEGER:
            if type(value) is not int or not self.low <= value <= self.high:
                raise ValueError(f"{self.name}: expected an integer of type {self.type_name}")
            return value
        if not isinstance(value, str):
            raise ValueError(f"{self.name}: expected a string")
        if self.kind == KIND_UUID:
            if len(value) > 36:
                raise ValueError(f"{self.name}: not a UUID")
            return str(uuid.UUID(value))
        if len(value) > MAX_TEXT_CHARS or "\x00" in value:
            raise ValueError(f"{self.name}: text of at most {MAX_TEXT_CHARS} characters, no NUL")
        try:
            value.encode()
        except UnicodeEncodeError as exc:  # a lone surrogate from JSON's \ud800
            raise ValueError(f"{self.name}: not valid Unicode text") from exc
        return value

    def column_sql(self, qualifier: str) -> str:
        """This column in the reconciliation order (module doc)."""
        column = f"{qualifier}.{quote_ident(self.name)}"
        return f'{column} COLLATE "C"' if self.kind == KIND_TEXT else column

    def value_sql(self, qualifier: str) -> str:
        """This column as a JSON-ready value (UUIDs as text)."""
        column = f"{qualifier}.{quote_ident(self.name)}"
        return f"{column}::text" if self.kind in (KIND_UUID, KIND_TEXT) else column

    def param_sql(self, param: str) -> str:
        """A bound value of this part, typed and ordered like :meth:`column_sql`."""
        if self.kind == KIND_INTEGER:
            return f"CAST(:{param} AS bigint)"
        if self.kind == KIND_UUID:
            return f"CAST(:{param} AS uuid)"
        return f'CAST(:{param} AS text) COLLATE "C"'


class PrimaryKey:
    """The primary key of a mapped table (module doc)."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self.parts = tuple(_part(column) for column in table.primary_key.columns)
        self.names = tuple(part.name for part in self.parts)

    def unsupported(self) -> list[str]:
        """Why reconciliation cannot compare this key (empty: it can)."""
        if not self.parts:
            return ["a primary key"]
        problems = [
            f"a supported key type for column {part.name!r} ({part.type_name}; "
            "supported: smallint, integer, bigint, uuid, text)"
            for part in self.parts
            if part.kind is None
        ]
        if len(self.parts) > MAX_KEY_PARTS:
            problems.append(f"a key of at most {MAX_KEY_PARTS} columns")
        return problems

    def resource_id_sql(self, qualifier: str) -> str:
        """The ``resource_id`` rule (module doc) as SQL over ``qualifier``'s columns."""
        columns = [f"{qualifier}.{quote_ident(c.name)}" for c in key_columns(self.table)]
        if len(columns) == 1:
            return f"({columns[0]})::text"
        return f"jsonb_build_array({', '.join(columns)})::text"

    @staticmethod
    def resource_id(values: Sequence[Any]) -> str:
        """The ``resource_id`` rule (module doc) in Python, for key values already read:
        the same text :meth:`resource_id_sql` makes PostgreSQL write (``jsonb`` prints
        arrays as ``[a, "b"]`` and keeps non-ASCII characters as they are)."""
        if len(values) == 1:
            value = values[0]
            if isinstance(value, bool):  # PostgreSQL's boolean text
                return "true" if value else "false"
            return str(value)
        return json.dumps(
            [value if isinstance(value, int | str) else str(value) for value in values],
            ensure_ascii=False,
        )

    def parse(self, value: Any) -> Key:
        """A key value from JSON (an array, one element per column), checked and
        canonical; :class:`ValueError` names what is wrong."""
        if not isinstance(value, list | tuple) or len(value) != len(self.parts):
            raise ValueError(f"a key of {self.table.name} is an array of {len(self.parts)}")
        return tuple(part.parse(item) for part, item in zip(self.parts, value, strict=True))

    def row_sql(self, qualifier: str) -> str:
        """The key columns as one comparable (row) value, in the reconciliation order."""
        return _row([part.column_sql(qualifier) for part in self.parts])

    def order_sql(self, qualifier: str) -> str:
        """The key columns as an ``ORDER BY`` list, in the reconciliation order."""
        return ", ".join(part.column_sql(qualifier) for part in self.parts)

    def key_sql(self, key: Key, prefix: str, params: dict[str, Any]) -> str:
        """``key`` as bound parameters named ``prefix_<i>`` (added to ``params``),
        comparable with :meth:`row_sql`."""
        names = []
        for i, (part, value) in enumerate(zip(self.parts, key, strict=True)):
            params[f"{prefix}_{i}"] = value
            names.append(part.param_sql(f"{prefix}_{i}"))
        return _row(names)

    def values_sql(self, qualifier: str) -> list[str]:
        """The key columns as JSON-ready values (what a reply carries)."""
        return [part.value_sql(qualifier) for part in self.parts]

    def in_sql(self, qualifier: str, keys: Sequence[Key], params: dict[str, Any]) -> str:
        """``key IN (keys)`` with bound parameters (``keys`` must not be empty)."""
        listed = ", ".join(self.key_sql(key, f"k{i}", params) for i, key in enumerate(keys))
        return f"{self.row_sql(qualifier)} IN ({listed})"


def _row(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"({', '.join(items)})"


def _part(column: Any) -> KeyPart:
    kind_type = column.type
    type_name = str(kind_type.compile(dialect=_DIALECT))
    for cls, bits in _INT_BITS.items():  # BigInteger and SmallInteger are Integers
        if isinstance(kind_type, cls):
            limit = 1 << (bits - 1)
            return KeyPart(column.name, KIND_INTEGER, type_name, -limit, limit - 1)
    if isinstance(kind_type, Uuid | postgresql.UUID):
        return KeyPart(column.name, KIND_UUID, type_name)
    if isinstance(kind_type, String) and not isinstance(kind_type, Enum):
        return KeyPart(column.name, KIND_TEXT, type_name)
    return KeyPart(column.name, None, type_name)
