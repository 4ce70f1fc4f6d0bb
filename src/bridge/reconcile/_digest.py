"""Checksums of an app's synced rows per key range, computed in PostgreSQL.

Both sides of a reconciliation run these same queries — the local side directly,
the peer through its :class:`~bridge.reconcile.responder.ReconcileResponder` — so
equal rows give equal digests whatever the two databases' settings.

- **Range**: a prefix of the UUID primary key in lowercase hex (``""`` = the whole
  table, ``"3"``, ``"3a"``, ...).  It is queried as the id interval
  ``[prefix000…, prefixfff…]``, which PostgreSQL's byte-wise uuid order makes
  exactly the ids starting with that prefix, and which the primary key index serves.
- **Row digest**: ``md5`` of the JSON array of every column of the row, in table
  order; timestamps are rendered as text in UTC with microseconds (never through
  the session's ``TimeZone``), everything else by ``jsonb`` (canonical text).
- **Range digest**: ``md5`` of the row digests concatenated in id order, plus the
  row count; an empty range has count 0 and digest ``""``.
- **Version**: ``(updated_at, origin)`` of each row — ``updated_at`` as fixed-width
  UTC text, so comparing the strings compares the instants.

Requirements of a model: a single UUID primary key named ``id`` and the version
columns ``updated_at`` and ``origin`` (:class:`~bridge.errors.ConfigError` otherwise).
Each level costs one aggregate query; the leaf query returns id, version and row
digest, never the row itself.  :meth:`ModelDigests.count_rows` counts the rows of
ranges up to a cap (primary key index entries only, at most ``cap`` of them), so a
responder can refuse a ``rows`` request that asks for too many before reading any.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client
from sqlalchemy import DateTime, Table, inspect, select, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from bridge.config import BridgeConfig
from bridge.errors import ConfigError, ReconcileError
from bridge.outbox.capture import Outbox, Synced

HEX = "0123456789abcdef"
_PREFIX = re.compile(r"^[0-9a-f]{0,32}$")
_UUID_HEX = 32
_TS_FORMAT = 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'


@dataclass(frozen=True, slots=True)
class RangeDigest:
    """Row count and digest of the rows whose id starts with ``prefix``."""

    prefix: str
    count: int
    digest: str


@dataclass(frozen=True, slots=True)
class RowDigest:
    """One row's id, version and digest (what a leaf comparison needs)."""

    id: str
    updated_at: str
    origin: str
    digest: str

    @property
    def version(self) -> tuple[str, str]:
        return (self.updated_at, self.origin)


def check_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or not _PREFIX.match(prefix):
        raise ReconcileError(f"range {prefix!r} is not a lowercase hex prefix of at most 32 digits")
    return prefix


def bounds(prefix: str) -> tuple[str, str]:
    """The first and last UUID (text) whose hex starts with ``prefix``."""
    check_prefix(prefix)
    low = prefix.ljust(_UUID_HEX, "0")
    high = prefix.ljust(_UUID_HEX, "f")
    return str(uuid.UUID(low)), str(uuid.UUID(high))


class ModelDigests:
    """The digest queries of one synced model (module doc)."""

    def __init__(self, model: type[Synced]) -> None:
        mapper = inspect(model)
        table = mapper.local_table
        if not isinstance(table, Table):
            raise ConfigError(f"{model.__name__} is not mapped to a table")
        names = {c.name for c in table.columns}
        pk = [c.name for c in table.primary_key.columns]
        if pk != ["id"] or not {"updated_at", "origin"} <= names:
            raise ConfigError(
                f"reconciliation needs a single UUID primary key 'id' and version columns "
                f"'updated_at', 'origin' on {table.name}"
            )
        self.model = model
        self.resource = model.__bridge_resource__
        self.table = table
        quote = postgresql.dialect().identifier_preparer.quote  # type: ignore[no-untyped-call]
        self._table_sql = quote(table.name)
        if table.schema:
            self._table_sql = f"{quote(table.schema)}.{self._table_sql}"
        parts = []
        for column in table.columns:
            name = f"t.{quote(column.name)}"
            if isinstance(column.type, DateTime):
                zoned = f"{name} AT TIME ZONE 'UTC'" if column.type.timezone else name
                parts.append(f"to_char({zoned}, '{_TS_FORMAT}')")
            else:
                parts.append(name)
        self.row_digest_sql = f"md5(jsonb_build_array({', '.join(parts)})::text)"
        updated = table.columns["updated_at"]
        aware = isinstance(updated.type, DateTime) and updated.type.timezone
        zoned = "t.updated_at AT TIME ZONE 'UTC'" if aware else "t.updated_at"
        ranges = (
            "unnest(CAST(:prefixes AS text[]), CAST(:lows AS uuid[]), CAST(:highs AS uuid[]))"
            " AS r(prefix, low, high)"
        )
        self._digests = text(
            f"SELECT r.prefix, count(t.id) AS n, "
            f"coalesce(md5(string_agg({self.row_digest_sql}, '' ORDER BY t.id)), '') AS digest "
            f"FROM {ranges} LEFT JOIN {self._table_sql} t ON t.id BETWEEN r.low AND r.high "
            f"GROUP BY r.prefix"
        )
        self._count = text(
            f"SELECT count(*) FROM (SELECT 1 FROM {ranges} JOIN {self._table_sql} t "
            f"ON t.id BETWEEN r.low AND r.high LIMIT :cap) AS capped"
        )
        self._rows = text(
            f"SELECT DISTINCT t.id::text AS id, to_char({zoned}, '{_TS_FORMAT}') AS updated_at, "
            f"t.origin AS origin, {self.row_digest_sql} AS digest "
            f"FROM {ranges} JOIN {self._table_sql} t ON t.id BETWEEN r.low AND r.high "
            f"ORDER BY 1"
        )

    @staticmethod
    def _params(prefixes: Sequence[str]) -> dict[str, Any]:
        pairs = [bounds(p) for p in prefixes]
        return {
            "prefixes": list(prefixes),
            "lows": [low for low, _ in pairs],
            "highs": [high for _, high in pairs],
        }

    async def digests(self, conn: AsyncConnection, prefixes: Sequence[str]) -> list[RangeDigest]:
        """Count and digest of each range, in the order asked."""
        if not prefixes:
            return []
        result = await conn.execute(self._digests, self._params(prefixes))
        found = {r.prefix: RangeDigest(r.prefix, int(r.n), r.digest) for r in result}
        return [found[p] for p in prefixes]

    async def count_rows(self, conn: AsyncConnection, prefixes: Sequence[str], cap: int) -> int:
        """Rows in the ranges, counted up to ``cap`` (a cheap bound, read before a scan)."""
        if not prefixes:
            return 0
        params = {**self._params(prefixes), "cap": cap}
        return int(await conn.scalar(self._count, params) or 0)

    async def rows(self, conn: AsyncConnection, prefixes: Sequence[str]) -> list[RowDigest]:
        """Id, version and digest of every row in the ranges, by id."""
        if not prefixes:
            return []
        result = await conn.execute(self._rows, self._params(prefixes))
        return [RowDigest(r.id, r.updated_at, r.origin, r.digest) for r in result]

    async def reemit(self, session: AsyncSession, outbox: Outbox, ids: Sequence[str]) -> int:
        """Re-state the rows ``ids`` (those that exist) through ``outbox``, in the
        caller's transaction; returns the number of outbox rows written."""
        if not ids:
            return 0
        keys = [uuid.UUID(i) for i in ids]
        column = self.table.columns["id"]
        rows = (await session.execute(select(self.model).where(column.in_(keys)))).scalars().all()
        return await outbox.emit_snapshots(session, list(rows))


class LocalSide:
    """This app's side of a reconciliation — its config, connection, database, synced
    models (digests by resource, in dependency order) and the outbox that re-emits
    them: what a :class:`~bridge.reconcile.reconciler.Reconciler` and a
    :class:`~bridge.reconcile.responder.ReconcileResponder` work on."""

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
