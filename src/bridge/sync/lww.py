"""Last writer wins: the one applier of incoming row versions, for a run of events of one
synced table — a per-event handler is a run of one.

The table is a :class:`~bridge.sync.table.SyncedTable`: any primary key, a version
(a clock column — a timestamp or an integer counter — and optionally an origin
column, compared in that order: :mod:`bridge.sync.versions`), optionally a tombstone
column (a soft delete is one more version of the row) and natural keys unique among
live rows.  :meth:`LastWriterWins.apply` takes the run's envelopes and each one's
payload as column values (:meth:`SyncedTable.decode`) and, in a constant number of
statements:

0. **Bounds** every incoming timestamp clock: later than ``clock()`` +
   ``max_clock_skew`` (pass the bridge config's) is ``Reject(reason="future_version")``
   (:func:`bridge.routing.version_time.check_version_time`) — stored, such a version
   would win every comparison and leave no room for a newer one.  In a run of several
   the call raises and the inbox re-runs each event alone, where it decides that one.
   An integer counter has no clock to bound it (a limit: a forged huge counter wins).

1. **Locks and loads** every row of the run in ONE ``SELECT ... FOR NO KEY UPDATE``
   (in primary-key order, so concurrent consumers lock in one order).
2. **Judges** each event in order against the row as the events before it in the run
   left it (:func:`~bridge.sync.versions.judge`):

   - newer, or a record unknown here → **apply**: every column is stored verbatim,
     the sender's version included (never bumped);
   - the same version → nothing, except when the content differs and the event's
     producer is the version's origin: a reconciliation re-emit repairing a hand edit
     that did not bump the version (:mod:`bridge.reconcile.repair`) — applied, logged.
     Without an origin column no producer may repair;
   - older → **stale**: not applied; ``on_stale`` is told (by default a row of
     ``bridge_sync_stale_events``, in the handler's transaction), logged.

   A table without a tombstone column deletes the row on a ``*.deleted`` event whose
   version is the stored one or newer (stale otherwise).  Known limit: nothing is left
   to remember the delete, so a late, older create of that record inserts it again —
   declare a tombstone where that matters.

3. **Natural keys**: an applied live row whose key another live record holds — in the
   database, or written earlier in the run — is decided by the per-event rule, which
   needs that event alone: in a run of several events the call raises
   :class:`Collision` (a :class:`~bridge.errors.Retry`), the inbox re-runs each event
   of the run alone (:mod:`bridge.routing.router`, batch handlers), and alone:

   - the holder's version came from the event's producer → :class:`~bridge.errors.Retry`:
     the sender enforces the same unique key, so it must already have moved its holder
     away in a newer version that is still in flight;
   - otherwise (the holder was written here, or the table has no origin column) → a
     real conflict: ``on_conflict`` records it (by default a row of
     ``bridge_sync_conflicts``, in its own transaction: the handler's is rolled back),
     then ``Reject(reason="conflict")`` → dead letter.  Known limit: a move of ours the
     sender had seen and that is still in flight is reported as a conflict too (the
     snapshot does not say what the sender had seen); the dead letter replays.

4. **Writes** the final row of every applied record: ONE ``INSERT ... ON CONFLICT
   (primary key) DO UPDATE`` for rows it locked, ONE plain ``INSERT`` for new ones — a
   record a concurrent transaction inserted meanwhile was never judged here, so its
   unique violation fails the call (retried) rather than being overwritten — and ONE
   ``DELETE`` for hard deletes.

Unknown records are inserted whatever they are, tombstones included, so a late, older
create cannot resurrect a deleted record.  Everything happens in the caller's session
(the inbox transaction, publishing suppressed); a run that raises leaves nothing.

:meth:`LastWriterWins.for_model` builds the applier of a model with the default
recorders and :meth:`LastWriterWins.register` puts it on a router for every action
of the model's resource (batch handler by default; per-event with ``batch=False`` —
the same code with a run of one)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

from sqlalchemy import delete, select, tuple_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import ColumnElement

from bridge.config import DEFAULT_MAX_CLOCK_SKEW, Clock, system_clock
from bridge.envelope import Envelope
from bridge.errors import Reject, Retry
from bridge.routing.router import Router
from bridge.routing.version_time import check_version_time
from bridge.sync.convert import to_json
from bridge.sync.table import SyncedTable
from bridge.sync.versions import Verdict, judge

log = logging.getLogger("bridge.services.sync")

REASON_CONFLICT = "conflict"

__all__ = ["Collision", "Conflict", "LastWriterWins", "Stale", "SyncedTable"]


class Collision(Retry):
    """A run of several events met a natural-key holder: each is re-run alone (module doc)."""


@dataclass(frozen=True, slots=True)
class Stale:
    """An event older than the stored version: not applied (module doc).  ``incoming``
    and ``local`` are the versions, ``{version column: value}``."""

    envelope: Envelope
    record_id: Any  # the primary key's value (a tuple for a composite key)
    incoming: Mapping[str, Any]
    local: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Conflict:
    """A live incoming row whose natural key (``key``, its columns) a record written
    here holds."""

    envelope: Envelope
    table: SyncedTable
    key: tuple[str, ...]
    values: Mapping[str, Any]  # the incoming row
    holder: Mapping[str, Any]  # the local row holding the key


_Key = tuple[Any, ...]
_DELETED: Mapping[str, Any] = {}  # a hard delete in ``_Run.writes``


@dataclass(slots=True)
class _Run:
    """The state of one :meth:`LastWriterWins.apply`."""

    # each record as the events before the current one in this run left it (None: absent)
    current: dict[_Key, Mapping[str, Any] | None]
    known: set[_Key] = field(default_factory=set)  # rows locked until the commit
    writes: dict[_Key, Mapping[str, Any]] = field(default_factory=dict)  # final rows applied
    stale: list[Stale] = field(default_factory=list)
    repaired: list[Envelope] = field(default_factory=list)
    live: list[tuple[Envelope, Mapping[str, Any]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.known = set(self.current)


OnStale = Callable[[AsyncSession, Sequence[Stale]], Awaitable[None]]
OnConflict = Callable[[AsyncSession, Conflict], Awaitable[None]]


class LastWriterWins:
    """Applies runs of incoming versions to one synced table (module doc)."""

    def __init__(
        self,
        table: SyncedTable,
        *,
        clock: Clock = system_clock,
        max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW,
        on_stale: OnStale | None = None,
        on_conflict: OnConflict | None = None,
    ) -> None:
        """``clock`` and ``max_clock_skew``: the bridge config's (``config.clock``,
        ``config.max_clock_skew``), so incoming versions are bounded like envelopes.
        ``on_stale`` / ``on_conflict``: ``None`` reports nothing but the log."""
        self.table = table
        self._clock = clock
        self._max_clock_skew = max_clock_skew
        self._on_stale = on_stale
        self._on_conflict = on_conflict

    @classmethod
    def for_model(
        cls,
        model: type[Any],
        *,
        clock: Clock = system_clock,
        max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW,
        on_stale: OnStale | None = None,
        on_conflict: OnConflict | None = None,
    ) -> LastWriterWins:
        """The applier of ``model``, reporting into the bridge's tables unless told
        otherwise (``bridge_sync_stale_events``, ``bridge_sync_conflicts``)."""
        from bridge.sync.records import record_conflict, record_stale

        return cls(
            SyncedTable(model),
            clock=clock,
            max_clock_skew=max_clock_skew,
            on_stale=on_stale or record_stale,
            on_conflict=on_conflict or record_conflict,
        )

    def register(self, router: Router, *, batch: bool = True) -> None:
        """Handle every event of the model's resource on ``router`` (module doc)."""
        if batch:
            router.on_batch(self.table.resource_type, self.handle_batch)
        else:
            router.on_resource(self.table.resource_type, self.handle)

    async def handle(self, session: AsyncSession, envelope: Envelope) -> None:
        """The per-event handler: :meth:`handle_batch` of one."""
        await self.handle_batch(session, (envelope,))

    async def handle_batch(self, session: AsyncSession, envelopes: Sequence[Envelope]) -> None:
        """The batch handler: decode every payload, then :meth:`apply`, all or raise."""
        await self.apply(session, envelopes, [self.table.decode(e) for e in envelopes])

    async def apply(
        self,
        session: AsyncSession,
        envelopes: Sequence[Envelope],
        rows: Sequence[Mapping[str, Any]],
    ) -> None:
        """Apply ``rows[i]``, the payload of ``envelopes[i]`` as column values (module
        doc); raise to refuse the run (:class:`Collision`, ``Retry``, ``Reject``)."""
        self.bound_versions(envelopes, rows)
        synced = self.table
        table = synced.table
        pk = [table.c[name] for name in synced.primary_key]
        wanted = sorted({synced.key_of(row) for row in rows})
        loaded = await session.execute(
            select(table).where(_in(pk, wanted)).order_by(*pk).with_for_update(key_share=True)
        )
        run = _Run({synced.key_of(row): row for row in map(dict, loaded.mappings())})
        self._judge(envelopes, rows, run)
        if run.live:
            await self._check_natural_keys(session, run.live, single=len(rows) == 1)
        if run.stale and self._on_stale is not None:
            await self._on_stale(session, run.stale)
        await self._write(session, run)
        for envelope in run.repaired:
            _log_repaired(envelope)
        for each in run.stale:
            _log_stale(each)

    def bound_versions(
        self, envelopes: Sequence[Envelope], rows: Sequence[Mapping[str, Any]]
    ) -> None:
        """Step 0 of the module doc (``apply`` runs it; a handler may run it earlier,
        before checks of its own, so a version from the future is decided first)."""
        if not self.table.timed:
            return
        now = self._clock()
        clock = self.table.version[0]
        for envelope, row in zip(envelopes, rows, strict=True):
            value = row[clock]
            check_version_time(
                value if value.tzinfo is not None else value.replace(tzinfo=UTC),
                now=now,
                max_clock_skew=self._max_clock_skew,
                what=f"{envelope.event_type} payload {clock}",
            )

    def _judge(
        self, envelopes: Sequence[Envelope], rows: Sequence[Mapping[str, Any]], run: _Run
    ) -> None:
        """Step 2 of the module doc, into ``run``."""
        synced = self.table
        current, writes = run.current, run.writes
        held: dict[tuple[tuple[str, ...], _Key], _Key] = {}  # (key, value) -> record in run
        for envelope, values in zip(envelopes, rows, strict=True):
            record = synced.key_of(values)
            local = current.get(record)
            incoming = synced.version_of(values)
            version = synced.version_of(local) if local is not None else None
            if version is not None and None in version:
                version = None  # a stored row without a version (hand-made): any version wins
            verdict = judge(version, incoming)
            hard_delete = synced.tombstone is None and envelope.action == "deleted"
            if verdict is Verdict.STALE:
                assert local is not None
                record_id = synced.record_id(values)
                incoming_version, local_version = _version(synced, values), _version(synced, local)
                run.stale.append(Stale(envelope, record_id, incoming_version, local_version))
                continue
            if hard_delete:
                for key in synced.natural_keys:  # its keys are free from here on
                    if local is not None and held.get((key, _values(local, key))) == record:
                        del held[(key, _values(local, key))]
                if local is not None or record in run.known:
                    writes[record] = _DELETED
                else:
                    writes.pop(record, None)
                current[record] = None
                continue
            if verdict is Verdict.SAME:
                # only the version's origin may repair a divergent row (module doc)
                if local is None or synced.origin is None:
                    continue
                if envelope.producer != values[synced.origin]:
                    continue
                if not any(local[name] != value for name, value in values.items()):
                    continue
                run.repaired.append(envelope)
            for key in synced.natural_keys:
                if local is not None and held.get((key, _values(local, key))) == record:
                    del held[(key, _values(local, key))]  # no longer holds its earlier key
                if synced.is_live(values) and None not in (value := _values(values, key)):
                    holder = held.get((key, value))
                    if holder is not None and holder != record:
                        raise Collision(
                            f"{_show(key, value)} of {synced.record_id(values)} is held by "
                            f"{holder[0] if len(holder) == 1 else holder}"
                        )
                    held[(key, value)] = record
            if synced.natural_keys and synced.is_live(values):
                run.live.append((envelope, values))
            current[record] = writes[record] = values

    async def _check_natural_keys(
        self,
        session: AsyncSession,
        live: Sequence[tuple[Envelope, Mapping[str, Any]]],
        *,
        single: bool,
    ) -> None:
        """Step 3 of the module doc: ONE query per natural key for every incoming row."""
        synced = self.table
        table = synced.table
        for key in synced.natural_keys:
            wanted = {_values(values, key) for _, values in live} - {()}
            wanted = {value for value in wanted if None not in value}
            if not wanted:
                continue
            where = [_in([table.c[name] for name in key], sorted(wanted, key=repr))]
            if synced.tombstone is not None:
                where.append(table.c[synced.tombstone].is_(None))
            found = await session.execute(select(table).where(*where))
            holders = {_values(row, key): row for row in map(dict, found.mappings())}
            for envelope, values in live:
                holder = holders.get(_values(values, key))
                if holder is None or synced.key_of(holder) == synced.key_of(values):
                    continue
                await self._collide(session, envelope, key, values, holder, single=single)

    async def _collide(
        self,
        session: AsyncSession,
        envelope: Envelope,
        key: tuple[str, ...],
        values: Mapping[str, Any],
        holder: Mapping[str, Any],
        *,
        single: bool,
    ) -> None:
        synced = self.table
        record, held_by = synced.record_id(values), synced.record_id(holder)
        shown = _show(key, _values(values, key))
        if not single:
            raise Collision(f"{shown} of {record} is held by {held_by}")
        origin = synced.origin
        if origin is not None and holder[origin] == envelope.producer:
            raise Retry(
                f"{shown} is held here by {held_by}, last written by "
                f"{holder[origin]}: its newer version is still in flight"
            )
        if self._on_conflict is not None:
            await self._on_conflict(session, Conflict(envelope, synced, key, values, holder))
        _log_conflict(envelope, key, held_by, record)
        raise Reject(
            f"{synced.table.name}.{shown} of {record} from "
            f"{envelope.producer} collides with local record {held_by}",
            reason=REASON_CONFLICT,
        )

    async def _write(self, session: AsyncSession, run: _Run) -> None:
        """Step 4 of the module doc."""
        synced, known = self.table, run.known
        table = synced.table
        pk = [table.c[name] for name in synced.primary_key]
        gone = [record for record, values in run.writes.items() if values is _DELETED]
        locked = [dict(v) for r, v in run.writes.items() if r in known and v is not _DELETED]
        new = [dict(v) for r, v in run.writes.items() if r not in known and v is not _DELETED]
        if gone:
            await session.execute(delete(table).where(_in(pk, gone)))
        if new:
            await _insert_many(session, pg_insert(table), new)
        if locked:
            # Rows locked above: the conflict always hits the row that was judged.
            upsert = pg_insert(table)
            upsert = upsert.on_conflict_do_update(
                index_elements=pk,
                set_={
                    name: upsert.excluded[name]
                    for name in locked[0]
                    if name not in synced.primary_key
                },
            )
            await _insert_many(session, upsert, locked)


async def _insert_many(session: AsyncSession, statement: Any, rows: list[dict[str, Any]]) -> None:
    """``statement`` (an INSERT) for every row of ``rows``.

    Rows with the same columns go as parameter sets of one statement: SQLAlchemy
    compiles it once (cached) and sends the rows in multi-row VALUES batches.  Why not
    ``.values(rows)``: a multi-row VALUES clause is compiled again for every batch —
    a third of a consumer's CPU in the end-to-end benchmark.  Rows whose columns differ
    (a payload version without a column) keep ``.values(rows)``, which fills the
    columns a row lacks with their defaults.
    """
    columns = rows[0].keys()
    if all(row.keys() == columns for row in rows):
        await session.execute(statement, rows)
    else:
        await session.execute(statement.values(rows))


def _in(columns: Sequence[Any], keys: Sequence[_Key] | set[_Key]) -> ColumnElement[bool]:
    """``column IN (...)`` for one column, ``(a, b) IN ((...), ...)`` for several."""
    if len(columns) == 1:
        return columns[0].in_([key[0] for key in keys])  # type: ignore[no-any-return]
    return tuple_(*columns).in_(list(keys))


def _values(row: Mapping[str, Any], key: tuple[str, ...]) -> _Key:
    return tuple(row[name] for name in key)


def _version(synced: SyncedTable, row: Mapping[str, Any]) -> dict[str, Any]:
    return {name: row[name] for name in synced.version}


def _show(key: tuple[str, ...], value: _Key) -> str:
    if len(key) == 1:
        return f"{key[0]} {value[0]!r}"
    return f"({', '.join(key)}) {value!r}"


def _log_repaired(envelope: Envelope) -> None:
    log.warning(
        "repaired divergent row",
        extra={
            "event_id": envelope.event_id,
            "resource_type": envelope.resource_type,
            "resource_id": envelope.resource_id,
            "producer": envelope.producer,
        },
    )


def _log_stale(stale: Stale) -> None:
    log.info(
        "stale event ignored",
        extra={
            "event_id": stale.envelope.event_id,
            "resource_type": stale.envelope.resource_type,
            "resource_id": stale.envelope.resource_id,
            "incoming_version": to_json(dict(stale.incoming)),
            "local_version": to_json(dict(stale.local)),
        },
    )


def _log_conflict(envelope: Envelope, key: tuple[str, ...], local: Any, incoming: Any) -> None:
    log.warning(
        "natural-key conflict",
        extra={
            "event_id": envelope.event_id,
            "resource_type": envelope.resource_type,
            "key": ",".join(key),
            "local_id": str(local),
            "incoming_id": str(incoming),
            "producer": envelope.producer,
        },
    )
