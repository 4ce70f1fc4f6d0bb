"""A synced model as last-writer-wins sees it: its keys, its version, its tombstone,
and its events' payloads as rows.

:class:`SyncedTable` reads the model's declarations once (and refuses, with a
:class:`~bridge.errors.ConfigError` naming the model and what it lacks, a model they
do not fit):

- **primary key**: the mapped table's, of any type and any number of columns;
- ``__bridge_version__`` (default ``("updated_at", "origin")``): the version columns,
  compared in order — a **clock** column first, a timezone-aware ``DateTime``
  (bounded by ``max_clock_skew``) or an integer counter, then optionally an
  **origin** column (a string: the app that wrote the version), the tiebreak of equal
  clocks and the one producer allowed to repair a divergent row;
- ``__bridge_tombstone__`` (default ``None``): a nullable column that marks a deleted
  row (a soft delete is one more version).  Without one, a ``*.deleted`` event deletes
  the row (see :mod:`bridge.sync.lww` for what that cannot prevent);
- ``__bridge_natural_keys__`` (default none): keys unique among live rows, each a
  column name or a tuple of names.

:meth:`SyncedTable.decode` turns an envelope into the row it carries: the payload's
columns (:class:`bridge.sync.convert.RowCodec`), the primary key checked against the
envelope's ``resource_id`` (:meth:`bridge.keys.PrimaryKey.resource_id`, the rule every
writer of outbox rows follows), the version columns present, and a ``*.deleted`` event
that carries no tombstone made a tombstone at ``occurred_at`` (with a timestamp clock,
the version moves to it if later).  Anything else is ``Reject("invalid_payload")``.  No I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy import Table

from bridge.envelope import Envelope, parse_timestamp
from bridge.errors import ConfigError, Reject
from bridge.keys import PrimaryKey
from bridge.routing.outcomes import REASON_INVALID_PAYLOAD
from bridge.sync.convert import RowCodec

DEFAULT_VERSION = ("updated_at", "origin")


def _names(key: str | Sequence[str]) -> tuple[str, ...]:
    return (key,) if isinstance(key, str) else tuple(key)


@dataclass(frozen=True, slots=True)
class SyncedTable:
    """What the applier needs to know about a synced model's table (module doc)."""

    model: type[Any]
    primary_key: tuple[str, ...] = field(init=False)
    version: tuple[str, ...] = field(init=False)
    #: The clock column holds timestamps (bounded by ``max_clock_skew``), not a counter.
    timed: bool = field(init=False)
    origin: str | None = field(init=False)
    tombstone: str | None = field(init=False)
    natural_keys: tuple[tuple[str, ...], ...] = field(init=False)
    codec: RowCodec = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        model = self.model
        table = getattr(model, "__table__", None)
        if not isinstance(table, Table):
            raise ConfigError(f"{model.__name__} is not a mapped model of one table")
        columns = table.c
        version = _names(getattr(model, "__bridge_version__", DEFAULT_VERSION))
        tombstone = getattr(model, "__bridge_tombstone__", None)
        keys = tuple(_names(key) for key in getattr(model, "__bridge_natural_keys__", ()))
        named = [*version, *([tombstone] if tombstone else []), *(n for k in keys for n in k)]
        if missing := [name for name in named if name not in columns]:
            raise ConfigError(f"{model.__name__} has no column {', '.join(missing)}")
        if not 1 <= len(version) <= 2:
            raise ConfigError(f"{model.__name__}.__bridge_version__: a clock, then an origin")
        clock = columns[version[0]].type
        timed = isinstance(clock, sa.DateTime)
        if not (timed and clock.timezone) and not isinstance(clock, sa.Integer):
            raise ConfigError(
                f"{model.__name__}.{version[0]} (the version's clock) must be a "
                "DateTime(timezone=True) or an integer column"
            )
        if len(version) == 2 and not isinstance(columns[version[1]].type, sa.String):
            raise ConfigError(f"{model.__name__}.{version[1]} (the origin) must be a string")
        if tombstone is not None and not columns[tombstone].nullable:
            raise ConfigError(f"{model.__name__}.{tombstone} (the tombstone) must be nullable")
        if not table.primary_key.columns:
            raise ConfigError(f"{model.__name__} has no primary key")
        setter = object.__setattr__
        setter(self, "primary_key", tuple(c.name for c in table.primary_key.columns))
        setter(self, "version", version)
        setter(self, "timed", timed)
        setter(self, "origin", version[1] if len(version) == 2 else None)
        setter(self, "tombstone", tombstone)
        setter(self, "natural_keys", keys)
        setter(self, "codec", RowCodec(model))

    @property
    def table(self) -> Table:
        return cast("Table", self.model.__table__)

    @property
    def resource_type(self) -> str:
        return str(self.model.__bridge_resource__)

    def key_of(self, values: Mapping[str, Any]) -> tuple[Any, ...]:
        """The primary key of a row, as a tuple."""
        return tuple(values[name] for name in self.primary_key)

    def record_id(self, values: Mapping[str, Any]) -> Any:
        """The primary key as reported: the value, or a tuple for a composite key."""
        key = self.key_of(values)
        return key[0] if len(key) == 1 else key

    def version_of(self, values: Mapping[str, Any]) -> tuple[Any, ...]:
        """The row's version, comparable (timestamps in UTC)."""
        return tuple(_comparable(values[name]) for name in self.version)

    def is_live(self, values: Mapping[str, Any]) -> bool:
        return self.tombstone is None or values[self.tombstone] is None

    def decode(self, envelope: Envelope) -> dict[str, Any]:
        """The row ``envelope`` carries (module doc), or ``Reject("invalid_payload")``."""
        what = envelope.event_type
        values = self.codec.decode(envelope.payload, what=what)
        for name in self.version:
            if values[name] is None:
                raise Reject(f"{what} payload: version column {name} is null", reason=_INVALID)
        resource_id = PrimaryKey.resource_id(self.key_of(values))
        if resource_id != envelope.resource_id:
            raise Reject(
                f"{what} payload key {resource_id[:80]!r} differs from resource_id "
                f"{envelope.resource_id[:80]!r}",
                reason=_INVALID,
            )
        if envelope.action == "deleted" and self.tombstone and values[self.tombstone] is None:
            # A producer that hard-deletes sends no tombstone: the delete happened at occurred_at.
            deleted_at = parse_timestamp(envelope.occurred_at)
            values[self.tombstone] = _as_column(self.table.c[self.tombstone], deleted_at)
            clock = self.version[0]
            if self.timed and deleted_at > values[clock]:
                values[clock] = deleted_at
        return values


_INVALID = REASON_INVALID_PAYLOAD


def _comparable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value


def _as_column(column: sa.Column[Any], moment: datetime) -> Any:
    if isinstance(column.type, sa.DateTime) and not column.type.timezone:
        return moment.replace(tzinfo=None)
    return moment
