"""Last writer wins: the one applier of incoming row versions, for a run of events of one
synced table — a per-event handler is a run of one.

A *synced table* (:class:`SyncedTable`) has a primary key ``id``, a version —
``updated_at`` and ``origin`` (:mod:`bridge.sync.versions`) — a tombstone column
``deleted_at`` (a soft delete is one more version of the row) and, optionally, a
natural key unique among live rows.  :meth:`LastWriterWins.apply` takes the run's
envelopes and each one's payload as column values (decoded by the handler) and, in a
constant number of statements:

0. **Bounds** every incoming ``updated_at``: later than ``clock()`` +
   ``max_clock_skew`` (pass the bridge config's) is ``Reject(reason="future_version")``
   (:func:`bridge.routing.version_time.check_version_time`) — stored, such a version
   would win every comparison and leave no room for a newer one.  In a run of several
   the call raises and the inbox re-runs each event alone, where it decides that one.

1. **Locks and loads** every row of the run in ONE ``SELECT ... FOR NO KEY UPDATE``
   (in id order, so concurrent consumers lock in one order).
2. **Judges** each event in order against the row as the events before it in the run
   left it (:func:`~bridge.sync.versions.judge`):

   - newer, or a record unknown here → **apply**: every column is stored verbatim,
     the sender's ``updated_at`` and ``origin`` included (never bumped);
   - the same version → nothing, except when the content differs and the event's
     producer is the version's origin: a reconciliation re-emit repairing a hand edit
     that did not bump the version (:mod:`bridge.reconcile.repair`) — applied, logged;
   - older → **stale**: not applied; ``on_stale`` is told (an audit table), logged.

3. **Natural key**: an applied live row whose key another live record holds — in the
   database, or written earlier in the run — is decided by the per-event rule, which
   needs that event alone: in a run of several events the call raises
   :class:`Collision` (a :class:`~bridge.errors.Retry`), the inbox re-runs each event
   of the run alone (:mod:`bridge.routing.router`, batch handlers), and alone:

   - the holder's version came from the event's producer → :class:`~bridge.errors.Retry`:
     the sender enforces the same unique key, so it must already have moved its holder
     away in a newer version that is still in flight;
   - otherwise (the holder was written here) → a real conflict: ``on_conflict`` records
     it (outside the transaction, which is rolled back), then
     ``Reject(reason="conflict")`` → dead letter.  Known limit: a move of ours the
     sender had seen and that is still in flight is reported as a conflict too (the
     snapshot does not say what the sender had seen); the dead letter replays.

4. **Writes** the final row of every applied record: ONE ``INSERT ... ON CONFLICT (id)
   DO UPDATE`` for rows it locked, ONE plain ``INSERT`` for new ones — a record a
   concurrent transaction inserted meanwhile was never judged here, so its unique
   violation fails the call (retried) rather than being overwritten.

Unknown records are inserted whatever they are, tombstones included, so a late, older
create cannot resurrect a deleted record.  Everything happens in the caller's session
(the inbox transaction, publishing suppressed); a run that raises leaves nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Table, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from bridge.config import DEFAULT_MAX_CLOCK_SKEW, Clock, system_clock
from bridge.envelope import Envelope, format_timestamp
from bridge.errors import Reject, Retry
from bridge.routing.version_time import check_version_time
from bridge.sync.versions import Verdict, Version, judge

log = logging.getLogger("bridge.services.sync")

REASON_CONFLICT = "conflict"


class Collision(Retry):
    """A run of several events met a natural-key holder: each is re-run alone (module doc)."""


@dataclass(frozen=True, slots=True)
class SyncedTable:
    """What the applier needs to know about a synced model's table."""

    model: type[Any]  # a mapped class with ``id``, ``updated_at``, ``origin``, ``deleted_at``
    #: A column unique among live rows (``deleted_at IS NULL``), or ``None``.
    natural_key: str | None = None

    @property
    def table(self) -> Table:
        return cast("Table", self.model.__table__)


@dataclass(frozen=True, slots=True)
class Stale:
    """An event older than the stored version: not applied (module doc)."""

    envelope: Envelope
    record_id: Any
    incoming: Version
    local: Version


@dataclass(frozen=True, slots=True)
class Conflict:
    """A live incoming row whose natural key a record written here holds."""

    envelope: Envelope
    table: SyncedTable
    values: Mapping[str, Any]  # the incoming row
    holder: Mapping[str, Any]  # the local row holding the key


@dataclass(slots=True)
class _Run:
    """The state of one :meth:`LastWriterWins.apply`."""

    # each record as the events before the current one in this run left it
    current: dict[Any, Mapping[str, Any]]
    known: set[Any] = field(default_factory=set)  # rows locked until the commit
    writes: dict[Any, Mapping[str, Any]] = field(default_factory=dict)  # final rows applied
    stale: list[Stale] = field(default_factory=list)
    repaired: list[Envelope] = field(default_factory=list)
    live: list[tuple[Envelope, Mapping[str, Any]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.known = set(self.current)


OnStale = Callable[[AsyncSession, Sequence[Stale]], Awaitable[None]]
OnConflict = Callable[[Conflict], Awaitable[None]]


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
        ``config.max_clock_skew``), so incoming versions are bounded like envelopes."""
        self.table = table
        self._clock = clock
        self._max_clock_skew = max_clock_skew
        self._on_stale = on_stale
        self._on_conflict = on_conflict

    async def apply(
        self,
        session: AsyncSession,
        envelopes: Sequence[Envelope],
        rows: Sequence[Mapping[str, Any]],
    ) -> None:
        """Apply ``rows[i]``, the payload of ``envelopes[i]`` as column values (module
        doc); raise to refuse the run (:class:`Collision`, ``Retry``, ``Reject``)."""
        self.bound_versions(envelopes, rows)
        table = self.table.table
        loaded = await session.execute(
            select(table)
            .where(table.c.id.in_(sorted({row["id"] for row in rows})))
            .order_by(table.c.id)
            .with_for_update(key_share=True)
        )
        run = _Run({row["id"]: dict(row) for row in loaded.mappings()})
        self._judge(envelopes, rows, run)
        if run.live:
            await self._check_natural_key(session, run.live, single=len(rows) == 1)
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
        now = self._clock()
        for envelope, row in zip(envelopes, rows, strict=True):
            check_version_time(
                row["updated_at"],
                now=now,
                max_clock_skew=self._max_clock_skew,
                what=f"{envelope.event_type} payload updated_at",
            )

    def _judge(
        self, envelopes: Sequence[Envelope], rows: Sequence[Mapping[str, Any]], run: _Run
    ) -> None:
        """Step 2 of the module doc, into ``run``."""
        key = self.table.natural_key
        current, writes, stale, repaired, live = (
            run.current, run.writes, run.stale, run.repaired, run.live
        )  # fmt: skip
        held: dict[Any, Any] = {}  # natural key -> record written live earlier in the run
        for envelope, values in zip(envelopes, rows, strict=True):
            record_id = values["id"]
            local = current.get(record_id)
            incoming = Version(values["updated_at"], values["origin"])
            version = Version(local["updated_at"], local["origin"]) if local is not None else None
            verdict = judge(version, incoming)
            if verdict is Verdict.SAME:
                # only the version's origin may repair a divergent row (module doc)
                if local is None or envelope.producer != incoming.origin:
                    continue
                if not any(local[name] != value for name, value in values.items()):
                    continue
                repaired.append(envelope)
            elif verdict is Verdict.STALE:
                assert local is not None and version is not None
                stale.append(Stale(envelope, record_id, incoming, version))
                continue
            if key is not None:
                if local is not None and held.get(local[key]) == record_id:
                    del held[local[key]]  # this record no longer holds its earlier key
                if values["deleted_at"] is None:
                    holder = held.get(values[key])
                    if holder is not None and holder != record_id:
                        raise Collision(f"{key} {values[key]!r} of {record_id} is held by {holder}")
                    held[values[key]] = record_id
                    live.append((envelope, values))
            current[record_id] = writes[record_id] = values

    async def _check_natural_key(
        self,
        session: AsyncSession,
        live: Sequence[tuple[Envelope, Mapping[str, Any]]],
        *,
        single: bool,
    ) -> None:
        """Step 3 of the module doc: ONE query for every incoming live key."""
        table, key = self.table.table, self.table.natural_key
        assert key is not None
        column = table.c[key]
        found = await session.execute(
            select(table).where(
                column.in_({values[key] for _, values in live}), table.c.deleted_at.is_(None)
            )
        )
        holders = {row[key]: dict(row) for row in found.mappings()}
        for envelope, values in live:
            holder = holders.get(values[key])
            if holder is None or holder["id"] == values["id"]:
                continue
            if not single:
                held_by = holder["id"]
                raise Collision(f"{key} {values[key]!r} of {values['id']} is held by {held_by}")
            if holder["origin"] == envelope.producer:
                raise Retry(
                    f"{key} {values[key]!r} is held here by {holder['id']}, last written by "
                    f"{holder['origin']}: its newer version is still in flight"
                )
            if self._on_conflict is not None:
                await self._on_conflict(Conflict(envelope, self.table, values, holder))
            _log_conflict(envelope, key, holder, values)
            raise Reject(
                f"{table.name}.{key} {values[key]!r} of {values['id']} from "
                f"{envelope.producer} collides with local record {holder['id']}",
                reason=REASON_CONFLICT,
            )

    async def _write(self, session: AsyncSession, run: _Run) -> None:
        """Step 4 of the module doc."""
        table, known = self.table.table, run.known
        locked = [dict(values) for record_id, values in run.writes.items() if record_id in known]
        new = [dict(values) for record_id, values in run.writes.items() if record_id not in known]
        if new:
            await session.execute(pg_insert(table).values(new))
        if locked:
            # Rows locked above: the conflict always hits the row that was judged.
            upsert = pg_insert(table).values(locked)
            await session.execute(
                upsert.on_conflict_do_update(
                    index_elements=[table.c.id],
                    set_={name: upsert.excluded[name] for name in locked[0] if name != "id"},
                )
            )


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
            "resource_id": str(stale.record_id),
            "incoming_updated_at": format_timestamp(stale.incoming.updated_at),
            "local_updated_at": format_timestamp(stale.local.updated_at),
        },
    )


def _log_conflict(
    envelope: Envelope, key: str, holder: Mapping[str, Any], values: Mapping[str, Any]
) -> None:
    log.warning(
        "natural-key conflict",
        extra={
            "event_id": envelope.event_id,
            "resource_type": envelope.resource_type,
            "key": key,
            "local_id": str(holder["id"]),
            "incoming_id": str(values["id"]),
            "producer": envelope.producer,
        },
    )

