"""Checksums of an app's synced rows per key range, computed in PostgreSQL.

Both sides of a reconciliation run these same queries — the local side directly,
the peer through its :class:`~bridge.reconcile.responder.ReconcileResponder` — so
equal rows give equal digests whatever the two databases' settings.

- **Key and order**: the model's primary key, any of the kinds of :mod:`bridge.keys`
  (integer, UUID, text, composite), compared in the order both databases agree on
  (text ``COLLATE "C"``, :mod:`bridge.keys` says why).
- **Range** (:class:`KeyRange`): the keys ``low < key <= high``; ``None`` is
  unbounded, so ``KeyRange(None, None)`` is the whole table.  A range is cut into
  sub-ranges of about equal row counts at split keys (:meth:`ModelDigests.split`:
  the keys every ``n/16``-th row, by keyset over the range), which works the same
  for every key type.  Each range is one index range scan of the primary key (for a
  text key, of an index in ``COLLATE "C"``).
- **Row digest**: ``md5`` of the JSON array of every column of the row, in table
  order; timestamps are rendered as text in UTC with microseconds (never through
  the session's ``TimeZone``), everything else by ``jsonb`` (canonical text).
- **Range digest**: ``md5`` of the row digests concatenated in key order, plus the
  row count; an empty range has count 0 and digest ``""``.
- **Version**: ``(updated_at, origin)`` of each row — ``updated_at`` as fixed-width
  UTC text, so comparing the strings compares the instants.

Requirements of a model (:func:`check_model`): a key of a supported kind and the
version columns ``updated_at`` and ``origin`` (one :class:`~bridge.errors.ConfigError`
naming the model and everything it lacks).  Each level costs one query; the leaf
query returns key, version and row digest, never the row itself.
:meth:`ModelDigests.count_rows` counts the rows of ranges up to a cap, so a responder
can refuse a ``rows`` request that asks for too many before reading any.  Every
query takes its ranges as bound parameters and checks them first
(:meth:`ModelDigests.check_ranges`: keys of the model's kinds, no empty, inverted or
overlapping range), so one request reads each row at most once.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client
from sqlalchemy import DateTime, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from bridge.config import BridgeConfig
from bridge.errors import ConfigError
from bridge.keys import Key, PrimaryKey, table_sql
from bridge.outbox.capture import Outbox, Synced
from bridge.reconcile.restate import (
    RESOURCE_ID,
    model_table,
    snapshot_query,
    write_snapshots,
)

#: Sub-ranges one split cuts a range into (at most).
FANOUT = 16
VERSION_COLUMNS = ("updated_at", "origin")
_TS_FORMAT = 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'
_QUOTE = postgresql.dialect().identifier_preparer.quote  # type: ignore[no-untyped-call]


@dataclass(frozen=True, slots=True)
class KeyRange:
    """The keys ``low < key <= high`` (``None``: unbounded on that side)."""

    low: Key | None = None
    high: Key | None = None

    def to_json(self) -> list[list[Any] | None]:
        return [None if self.low is None else list(self.low),
                None if self.high is None else list(self.high)]  # fmt: skip

    def children(self, splits: Sequence[Key]) -> list[KeyRange]:
        """The sub-ranges cut at ``splits`` (ascending keys inside the range)."""
        bounds = [self.low, *splits, self.high]
        return [KeyRange(low, high) for low, high in itertools.pairwise(bounds)]


WHOLE = KeyRange()


@dataclass(frozen=True, slots=True)
class RangeDigest:
    """Row count and digest of the rows of ``range``."""

    range: KeyRange
    count: int
    digest: str


@dataclass(frozen=True, slots=True)
class RowDigest:
    """One row's key, version and digest (what a leaf comparison needs)."""

    key: Key
    updated_at: str
    origin: str
    digest: str

    @property
    def version(self) -> tuple[str, str]:
        return (self.updated_at, self.origin)


def check_model(model: type[Synced]) -> None:
    """:class:`ConfigError` naming ``model`` and all it lacks for reconciliation."""
    table = model_table(model)
    missing = PrimaryKey(table).unsupported()
    names = {c.name for c in table.columns}
    missing += [f"a version column {c!r}" for c in VERSION_COLUMNS if c not in names]
    if missing:
        raise ConfigError(
            f"{model.__name__} (table {table.name}) opts in to reconciliation but lacks "
            + "; ".join(missing)
        )


def check_ranges(ranges: Sequence[KeyRange]) -> None:
    """:class:`ValueError` if a range is empty or inverted, or two ranges overlap.

    Canonical keys compare in Python as the queries compare them in PostgreSQL
    (integers; UUID text; text by code point = ``COLLATE "C"``; tuples row-wise)."""
    for r in ranges:
        if r.low is not None and r.high is not None and not r.low < r.high:
            raise ValueError("a range's low bound must be below its high bound")
    ordered = sorted(ranges, key=lambda r: (r.low is not None, r.low or ()))
    for first, second in itertools.pairwise(ordered):
        if first.high is None or second.low is None or first.high > second.low:
            raise ValueError("ranges overlap")


class ModelDigests:
    """The digest queries of one synced model (module doc)."""

    def __init__(self, model: type[Synced]) -> None:
        check_model(model)
        table = model_table(model)
        self.model = model
        self.resource = model.__bridge_resource__
        self.table = table
        self.key = PrimaryKey(table)
        self._from = f"{table_sql(table)} t"
        parts = []
        for column in table.columns:
            name = f"t.{_QUOTE(column.name)}"
            if isinstance(column.type, DateTime):
                zoned = f"{name} AT TIME ZONE 'UTC'" if column.type.timezone else name
                parts.append(f"to_char({zoned}, '{_TS_FORMAT}')")
            else:
                parts.append(name)
        self.row_digest_sql = f"md5(jsonb_build_array({', '.join(parts)})::text)"
        updated = table.columns["updated_at"]
        aware = isinstance(updated.type, DateTime) and updated.type.timezone
        self._updated_sql = "t.updated_at AT TIME ZONE 'UTC'" if aware else "t.updated_at"
        self._row = self.key.row_sql("t")
        self._order = self.key.order_sql("t")
        self._values = ", ".join(
            f"{value} AS k{i}" for i, value in enumerate(self.key.values_sql("t"))
        )

    # -- key values -------------------------------------------------------------------
    def parse_key(self, value: Any) -> Key:
        """A key from JSON in canonical form; :class:`ValueError` if it is not one of
        this model's keys."""
        return self.key.parse(value)

    def parse_ranges(self, ranges: Sequence[KeyRange]) -> list[KeyRange]:
        """Ranges with canonical keys of this model, checked (:func:`check_ranges`)."""
        parsed = [
            KeyRange(
                None if r.low is None else self.key.parse(r.low),
                None if r.high is None else self.key.parse(r.high),
            )
            for r in ranges
        ]
        check_ranges(parsed)
        return parsed

    def _row_key(self, row: Any) -> Key:
        return tuple(row[f"k{i}"] for i in range(len(self.key.parts)))

    def _condition(self, r: KeyRange, i: int, params: dict[str, Any]) -> str:
        terms = []
        if r.low is not None:
            terms.append(f"{self._row} > {self.key.key_sql(r.low, f'l{i}', params)}")
        if r.high is not None:
            terms.append(f"{self._row} <= {self.key.key_sql(r.high, f'h{i}', params)}")
        return " AND ".join(terms) or "true"

    def _where(self, ranges: Sequence[KeyRange], params: dict[str, Any]) -> str:
        check_ranges(ranges)
        return " OR ".join(f"({self._condition(r, i, params)})" for i, r in enumerate(ranges))

    # -- queries ----------------------------------------------------------------------
    async def digests(self, conn: AsyncConnection, ranges: Sequence[KeyRange]) -> list[RangeDigest]:
        """Count and digest of each range, in the order asked."""
        if not ranges:
            return []
        check_ranges(ranges)
        params: dict[str, Any] = {}
        parts = [
            f"SELECT {i} AS i, count(*) AS n, coalesce(md5(string_agg({self.row_digest_sql}, '' "
            f"ORDER BY {self._order})), '') AS digest FROM {self._from} "
            f"WHERE {self._condition(r, i, params)}"
            for i, r in enumerate(ranges)
        ]
        result = await conn.execute(text(" UNION ALL ".join(parts)), params)
        found = {row.i: (int(row.n), row.digest) for row in result}
        return [RangeDigest(r, *found[i]) for i, r in enumerate(ranges)]

    async def count_rows(self, conn: AsyncConnection, ranges: Sequence[KeyRange], cap: int) -> int:
        """Rows in the ranges, counted up to ``cap`` (a cheap bound, read before a scan)."""
        if not ranges:
            return 0
        params: dict[str, Any] = {"cap": cap}
        query = (
            f"SELECT count(*) FROM (SELECT 1 FROM {self._from} "
            f"WHERE {self._where(ranges, params)} LIMIT :cap) AS capped"
        )
        return int(await conn.scalar(text(query), params) or 0)

    async def rows(self, conn: AsyncConnection, ranges: Sequence[KeyRange]) -> list[RowDigest]:
        """Key, version and digest of every row in the ranges, in key order."""
        if not ranges:
            return []
        params: dict[str, Any] = {}
        query = (
            f"SELECT {self._values}, to_char({self._updated_sql}, '{_TS_FORMAT}') AS updated_at, "
            f"t.origin AS origin, {self.row_digest_sql} AS digest FROM {self._from} "
            f"WHERE {self._where(ranges, params)} ORDER BY {self._order}"
        )
        result = (await conn.execute(text(query), params)).mappings()
        return [
            RowDigest(self._row_key(r), r["updated_at"], r["origin"], r["digest"]) for r in result
        ]

    async def split(self, conn: AsyncConnection, ranges: Sequence[KeyRange]) -> list[list[Key]]:
        """For each range, the ascending keys that cut it into at most :data:`FANOUT`
        sub-ranges of about equal row counts (none for fewer than two rows)."""
        if not ranges:
            return []
        check_ranges(ranges)
        params: dict[str, Any] = {}
        # Row rn ends a part when rn * FANOUT / n crosses an integer: at most FANOUT - 1
        # cuts, the last row never one (the range's high bound ends the last part).
        parts = [
            f"SELECT {i} AS i, * FROM (SELECT {self._values}, "
            f"row_number() OVER (ORDER BY {self._order}) AS rn, count(*) OVER () AS n "
            f"FROM {self._from} WHERE {self._condition(r, i, params)}) s "
            f"WHERE rn < n AND (rn * {FANOUT}) / n > ((rn - 1) * {FANOUT}) / n"
            for i, r in enumerate(ranges)
        ]
        query = f"SELECT * FROM ({' UNION ALL '.join(parts)}) cuts ORDER BY i, rn"
        found: list[list[Key]] = [[] for _ in ranges]
        for row in (await conn.execute(text(query), params)).mappings():
            found[row["i"]].append(self._row_key(row))
        return found

    async def reemit(self, session: AsyncSession, outbox: Outbox, keys: Sequence[Key]) -> int:
        """Re-state the rows ``keys`` (those that exist) through ``outbox``, in the
        caller's transaction; returns the number of outbox rows written."""
        if not keys:
            return 0
        params: dict[str, Any] = {}
        where = self.key.in_sql(table_sql(self.table), keys, params)
        query = snapshot_query(self.model).where(text(where).bindparams(**params))
        found = (await session.execute(query)).all()
        return await write_snapshots(
            session, outbox, [(row[0], row._mapping[RESOURCE_ID]) for row in found]
        )


class LocalSide:
    """This app's side of a reconciliation — its config, connection, database, the
    models it reconciles (digests by resource, in dependency order) and the outbox
    that re-emits them: what a :class:`~bridge.reconcile.reconciler.Reconciler` and
    a :class:`~bridge.reconcile.responder.ReconcileResponder` work on.

    ``models`` are the models that opted in
    (:func:`bridge.reconcile.synced_models.reconciled_models`); each is checked
    (:func:`check_model`)."""

    def __init__(
        self,
        config: BridgeConfig,
        nc: Client,
        engine: AsyncEngine,
        models: Sequence[type[Synced]],
        *,
        outbox: Outbox,
        session_factory: async_sessionmaker[AsyncSession] | None = None,
    ) -> None:
        self.config = config
        self.nc = nc
        self.engine = engine
        self.outbox = outbox
        self.sessions = session_factory or async_sessionmaker(engine, expire_on_commit=False)
        self.models = {m.__bridge_resource__: ModelDigests(m) for m in models}
