"""Transactional outbox capture, on the Python side: the opt-in mixin, the bridge
session's transaction-local settings, re-stated rows and explicit events.

Capture itself happens in PostgreSQL (:mod:`bridge.outbox.triggers`): each synced
table's row trigger writes the outbox row of every change, whatever made it, in the
writer's transaction.  This module's contract:

- Models opt in with the :class:`Synced` mixin: ``__bridge_resource__`` (the resource
  type of their events) and, for soft deletes, ``__bridge_tombstone__`` (a column
  whose non-null value makes an event ``deleted``).  A model missing the first or
  naming no column in the second raises :class:`~bridge.errors.ConfigError` when
  mappers configure, not at the first write.
- Sessions built from :attr:`Outbox.session_class` set, transaction-locally, before the
  first write of a transaction (a flush or an executed insert/update/delete/text
  statement) and again whenever they change: ``bridge.producer`` and
  ``bridge.subject`` (this app: so two apps sharing a database each publish their own
  writes), ``bridge.traceparent`` (the current trace, when tracing is on) and
  ``bridge.capture`` (``off`` inside :func:`skip_publish`).  Writes outside a bridge
  session are attributed to the database's recorded producer
  (:meth:`Outbox.record_producer`, done at every bridge start).
- ``with skip_publish(session):`` captures nothing — used when applying the other
  side's change, so a change never echoes back.  Changes made in the block but
  flushed later (by the commit after it) are suppressed too: the flag stays until
  the next flush.  A session entering a transaction under the flag sets it at once,
  so even SQL run on the session's raw connection is not captured.  Raw SQL does
  the same with ``SET LOCAL bridge.capture = 'off'``.
- After commit of a transaction that wrote through the session, the in-process commit
  listeners run (the relay's wake-up); the outbox's NOTIFY trigger wakes relays in
  other processes.  Neither ever carries the only copy of an event: the row does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

from sqlalchemy import Integer, TextClause, event, func, insert, inspect, literal_column, select
from sqlalchemy import text as sql_text
from sqlalchemy import tuple_ as sql_tuple
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction

from bridge.config import BridgeConfig
from bridge.envelope import Envelope
from bridge.event_schemas import EventSchemas
from bridge.keys import key_columns
from bridge.outbox.body import stored_body, stored_headers
from bridge.outbox.triggers import CaptureSpec
from bridge.schema import outbox as outbox_table

SKIP_PUBLISH_KEY = "bridge.skip_publish"
_SKIP_NEXT_FLUSH_KEY = "bridge.skip_next_flush"
_WROTE_KEY = "bridge.outbox_wrote"
# The settings this transaction's connection holds now (None: not set yet).
_SETTINGS_KEY = "bridge.capture_settings"

_SET_SETTINGS = sql_text(
    "SELECT set_config('bridge.producer', :producer, true), "
    "set_config('bridge.subject', :subject, true), "
    "set_config('bridge.capture', :capture, true), "
    "set_config('bridge.traceparent', :traceparent, true)"
)
_CAPTURE_OFF = sql_text("SELECT set_config('bridge.capture', 'off', true)")
_RECORD_PRODUCER = sql_text(
    "INSERT INTO bridge_capture_settings (singleton, producer, subject, updated_at) "
    "VALUES (true, :producer, :subject, now()) ON CONFLICT (singleton) DO UPDATE "
    "SET producer = EXCLUDED.producer, subject = EXCLUDED.subject, updated_at = now() "
    "WHERE bridge_capture_settings.producer IS DISTINCT FROM EXCLUDED.producer "
    "OR bridge_capture_settings.subject IS DISTINCT FROM EXCLUDED.subject"
)


class Synced:
    """Mixin for declarative models whose changes sync to the other side (module doc)."""

    __bridge_resource__: ClassVar[str]
    #: A column (attribute or column name) whose non-null value marks a tombstone:
    #: every event of such a row is ``deleted``.  None: the model deletes rows.
    __bridge_tombstone__: ClassVar[str | None] = None

    @classmethod
    def __declare_last__(cls) -> None:
        # Declarative calls this once mappers are configured: a model mistake fails
        # there, naming the model, instead of at the first write.
        CaptureSpec.of(cls)


def _sync_session(session: AsyncSession | Session) -> Session:
    return session.sync_session if isinstance(session, AsyncSession) else session


@contextlib.contextmanager
def skip_publish(session: AsyncSession | Session) -> Iterator[None]:
    """Suppress outbox capture for changes made inside the block (nesting-safe; module
    doc).  Flush before making, in the same session, changes that should be captured."""
    sync = _sync_session(session)
    info = sync.info
    previous = info.get(SKIP_PUBLISH_KEY, False)
    info[SKIP_PUBLISH_KEY] = True
    try:
        yield
    finally:
        info[SKIP_PUBLISH_KEY] = previous
        if not previous and (sync.new or sync.dirty or sync.deleted):
            info[_SKIP_NEXT_FLUSH_KEY] = True


async def ensure_capture_off(session: AsyncSession) -> None:
    """Make sure the capture triggers write nothing in ``session``'s transaction, whatever
    made the session: call inside ``skip_publish(session)`` after ``begin()``.

    A session of :attr:`Outbox.session_class` has set ``bridge.capture = 'off'`` as its
    transaction began (no extra statement); any other session — an application's own
    ``async_sessionmaker`` handed to the inbox — gets one ``set_config`` here, because the
    triggers capture every write that does not say otherwise and a peer's change applied
    without it would echo back to the peer.
    """
    await session.connection()  # begins: a bridge session applies its settings now
    settings = session.sync_session.info.get(_SETTINGS_KEY)
    if settings is None or settings.get("capture") != "off":
        await session.execute(_CAPTURE_OFF)


class Outbox:
    """One app's side of capture: its sessions' settings, re-stated rows and explicit
    events (module doc)."""

    def __init__(
        self,
        config: BridgeConfig,
        *,
        traceparent: Callable[[], str | None] | None = None,
        schemas: EventSchemas | None = None,
    ) -> None:
        self._config = config
        self._traceparent = traceparent
        self._schemas = schemas or EventSchemas()
        self._listeners: list[Callable[[], None]] = []
        # A subclass per Outbox: its events do not fire for other apps' sessions.
        self.session_class: type[Session] = type(f"BridgeSession_{config.app_name}", (Session,), {})
        event.listen(self.session_class, "after_begin", self._after_begin)
        event.listen(self.session_class, "before_flush", self._before_flush)
        event.listen(self.session_class, "do_orm_execute", self._do_orm_execute)
        event.listen(self.session_class, "after_transaction_end", self._after_transaction_end)
        event.listen(self.session_class, "after_commit", self._after_commit)
        event.listen(self.session_class, "after_rollback", self._after_rollback)

    @property
    def schemas(self) -> EventSchemas:
        """The event versions the capture triggers of this app must stamp."""
        return self._schemas

    def add_commit_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after each commit that wrote through a bridge session (cheap)."""
        self._listeners.append(callback)

    def remove_commit_listener(self, callback: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(callback)

    async def record_producer(self, engine: AsyncEngine) -> None:
        """Record this app as the producer of writes made outside a bridge session
        (``bridge_capture_settings``; idempotent, no write when already recorded)."""
        async with engine.begin() as conn:
            await conn.execute(
                _RECORD_PRODUCER,
                {"producer": self._config.app_name, "subject": self._config.subjects.publish},
            )

    # -- transaction-local settings -------------------------------------------------
    def _settings(self, skip: bool) -> dict[str, str]:
        # Under skip nothing is captured: no trace to pass (and no round trip per
        # handler span in the inbox).
        traceparent = None if skip or self._traceparent is None else self._traceparent()
        return {
            "producer": self._config.app_name,
            "subject": self._config.subjects.publish,
            "capture": "off" if skip else "on",
            "traceparent": traceparent or "",
        }

    def _apply(self, session: Session, connection: Connection, *, skip: bool) -> None:
        wanted = self._settings(skip)
        if session.info.get(_SETTINGS_KEY) != wanted:
            connection.execute(_SET_SETTINGS, wanted)
            session.info[_SETTINGS_KEY] = wanted

    def _before_write(self, session: Session, *, skip: bool) -> None:
        self._apply(session, session.connection(), skip=skip)
        if not skip:  # capture off writes no outbox row: no relay to wake at commit
            session.info[_WROTE_KEY] = True

    def _after_begin(
        self, session: Session, transaction: SessionTransaction, connection: Connection
    ) -> None:
        if transaction.nested:
            return
        session.info.pop(_SETTINGS_KEY, None)
        if session.info.get(SKIP_PUBLISH_KEY):
            self._apply(session, connection, skip=True)

    def _before_flush(self, session: Session, flush_context: Any, instances: Any) -> None:
        skip = bool(
            session.info.pop(_SKIP_NEXT_FLUSH_KEY, False) or session.info.get(SKIP_PUBLISH_KEY)
        )
        self._before_write(session, skip=skip)

    def _do_orm_execute(self, state: ORMExecuteState) -> None:
        if (
            state.is_insert
            or state.is_update
            or state.is_delete
            or isinstance(state.statement, TextClause)
        ):
            self._before_write(state.session, skip=bool(state.session.info.get(SKIP_PUBLISH_KEY)))

    def _after_transaction_end(self, session: Session, transaction: SessionTransaction) -> None:
        # A transaction's end resets set_config(..., true); a savepoint rolled back
        # undoes what was set inside it: set again before the next write.
        session.info.pop(_SETTINGS_KEY, None)

    def _after_commit(self, session: Session) -> None:
        if session.info.pop(_WROTE_KEY, False):
            for callback in list(self._listeners):
                callback()

    def _after_rollback(self, session: Session) -> None:
        session.info.pop(_SKIP_NEXT_FLUSH_KEY, None)
        session.info.pop(_WROTE_KEY, None)

    # -- re-stated rows and explicit events -----------------------------------------
    async def emit_snapshots(self, session: AsyncSession, instances: Sequence[Synced]) -> int:
        """Re-state rows as they are now: one outbox row per instance, in the caller's
        transaction, action ``updated`` (a tombstone: ``deleted``), built by the same
        SQL as the capture trigger's (:mod:`bridge.outbox.triggers`).

        Used by backfill and reconciliation.  The payload carries the row's stored
        version, so a receiver that applies last-writer-wins treats a re-stated row
        it already holds as the same version (no change) and never lets it
        overwrite newer data.  Returns the number of outbox rows written.
        """
        by_model: dict[type[Any], list[tuple[Any, ...]]] = {}
        for instance in instances:
            state = inspect(instance)
            identity = state.identity or state.mapper.primary_key_from_instance(instance)
            by_model.setdefault(type(instance), []).append(tuple(identity))
        if not by_model:
            return 0
        return int(await session.run_sync(self._emit, by_model))

    def _emit(self, session: Session, by_model: dict[type[Any], list[tuple[Any, ...]]]) -> int:
        session.flush()
        self._before_write(session, skip=False)
        written = 0
        for model, keys in by_model.items():
            spec = CaptureSpec.of(model, self._schemas)
            row = spec.table.alias("bridge_row")
            call = literal_column(f"{spec.emit_function}(bridge_row, 'updated')", Integer)
            columns = [row.c[column.key] for column in key_columns(spec.table)]
            statement = (
                select(func.coalesce(func.sum(call), 0))
                .select_from(row)
                .where(sql_tuple(*columns).in_(keys))
            )
            written += int(session.connection().execute(statement).scalar_one())
        return written

    def row_for(self, envelope: Envelope, subject: str | None = None) -> dict[str, Any]:
        """The outbox row of an explicit envelope."""
        return {
            "event_id": envelope.event_id,
            "subject": subject or self._config.subjects.publish,
            "event_type": envelope.event_type,
            "resource_type": envelope.resource_type,
            "resource_id": envelope.resource_id,
            "headers": stored_headers(envelope),
            "body": stored_body(envelope),
        }

    async def enqueue(
        self, session: AsyncSession, envelope: Envelope, *, subject: str | None = None
    ) -> None:
        """Add an explicit event (not a row change) in the caller's transaction."""
        row = self.row_for(envelope, subject)

        def write(sync: Session) -> None:
            sync.connection().execute(insert(outbox_table), [row])
            sync.info[_WROTE_KEY] = True

        await session.run_sync(write)
