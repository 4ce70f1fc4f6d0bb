"""Transactional outbox capture: one outbox row per synced row change, in the same
transaction as the change.

Contract:
- Models opt in with the :class:`Synced` mixin (``__bridge_resource__``).
- Only sessions built from :attr:`Outbox.session_class` capture (so two apps in one
  process each capture into their own subject).  At ``after_flush`` every created,
  changed (:meth:`Session.is_modified`) or deleted ``Synced`` instance adds one
  outbox row holding the complete envelope body — the full row snapshot as payload —
  through the flush's own connection: rollback → no row, commit → the row is there.
- The event's action is the model's answer (:meth:`Synced.bridge_action`) to what the
  flush saw, so a soft delete — an UPDATE that makes a tombstone — is a ``deleted``
  event whatever code wrote it, with nothing bypassing capture.
- Every insert into the outbox fires the table's statement trigger, which runs
  ``pg_notify('bridge_outbox')``; PostgreSQL delivers it only on commit (and drops
  it with a rolled-back savepoint), waking relays in other processes.
- After commit the in-process commit listeners run (the relay's wake-up).  They
  never carry the only copy of an event: the row does.
- Each envelope's ``schema_version`` is the current version of its type in the
  outbox's :class:`~bridge.event_schemas.EventSchemas` (1 when not declared).
- ``with skip_publish(session):`` captures nothing — used when applying the other
  side's change, so a change never echoes back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

from sqlalchemy import event, insert, inspect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, UOWTransaction

from bridge.config import BridgeConfig
from bridge.envelope import Envelope
from bridge.event_schemas import EventSchemas
from bridge.keys import PrimaryKey
from bridge.schema import outbox as outbox_table
from bridge.sync.convert import to_json

SKIP_PUBLISH_KEY = "bridge.skip_publish"
_CAPTURED_KEY = "bridge.outbox_captured"
_SKIP_NEXT_FLUSH_KEY = "bridge.skip_next_flush"


#: Column value → JSON value: the one rule, shared with the decoding side.
json_safe = to_json


class Synced:
    """Mixin for declarative models whose changes sync to the other side."""

    __bridge_resource__: ClassVar[str]

    def bridge_snapshot(self) -> dict[str, Any]:
        """The payload of this row's events: every mapped column, JSON-safe."""
        state = inspect(self)
        loaded = state.dict
        return {
            attr.key: json_safe(loaded[attr.key] if attr.key in loaded else getattr(self, attr.key))
            for attr in state.mapper.column_attrs
        }

    def bridge_action(self, change: str) -> str:
        """The action of an event about this row (``<resource>.<action>``).

        ``change`` is what the flush saw — ``created``, ``updated`` or ``deleted`` —
        or ``updated`` for a row re-stated as it is (backfill, reconciliation).  The
        default is the change itself; a model with soft deletes returns ``deleted`` for
        a tombstone, so every write path publishes one as a delete."""
        return change


def _sync_session(session: AsyncSession | Session) -> Session:
    return session.sync_session if isinstance(session, AsyncSession) else session


@contextlib.contextmanager
def skip_publish(session: AsyncSession | Session) -> Iterator[None]:
    """Suppress outbox capture for changes made inside the block (nesting-safe).

    Capture happens at flush time, so changes made in the block but flushed later
    (e.g. by the commit after the block) are suppressed too: the flag stays until
    the next flush.  Flush before making, in the same session, changes that should
    be captured.
    """
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


def publishing_suppressed(session: AsyncSession | Session) -> bool:
    return bool(_sync_session(session).info.get(SKIP_PUBLISH_KEY, False))


def _primary_key(instance: Any) -> str:
    state = inspect(instance)
    identity = state.identity or state.mapper.primary_key_from_instance(instance)
    return PrimaryKey.resource_id(identity)


class Outbox:
    """Captures synced row changes of one app into the outbox (module doc)."""

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
        event.listen(self.session_class, "after_flush", self._after_flush)
        event.listen(self.session_class, "after_commit", self._after_commit)
        event.listen(self.session_class, "after_rollback", self._after_rollback)

    def add_commit_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after each commit that captured rows (must be cheap)."""
        self._listeners.append(callback)

    def remove_commit_listener(self, callback: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(callback)

    # -- building rows --------------------------------------------------------------
    def envelope_for(self, instance: Synced, action: str) -> Envelope:
        resource = instance.__bridge_resource__
        traceparent = self._traceparent() if self._traceparent else None
        event_type = f"{resource}.{action}"
        return Envelope(
            event_type=event_type,
            schema_version=self._schemas.current_version(event_type, resource),
            producer=self._config.app_name,
            resource_type=resource,
            resource_id=_primary_key(instance),
            payload=instance.bridge_snapshot(),
            traceparent=traceparent,
            trace_id=_trace_id(traceparent),
        )

    def row_for(self, envelope: Envelope, subject: str | None = None) -> dict[str, Any]:
        return {
            "event_id": envelope.event_id,
            "subject": subject or self._config.subjects.publish,
            "event_type": envelope.event_type,
            "resource_type": envelope.resource_type,
            "resource_id": envelope.resource_id,
            "headers": envelope.headers(),
            "payload": envelope.to_dict(),
        }

    # -- capture --------------------------------------------------------------------
    def _after_flush(self, session: Session, flush_context: UOWTransaction) -> None:
        if session.info.pop(_SKIP_NEXT_FLUSH_KEY, False) or session.info.get(SKIP_PUBLISH_KEY):
            return
        changes = [
            *((instance, "created") for instance in session.new),
            *(
                (instance, "updated")
                for instance in session.dirty
                if session.is_modified(instance, include_collections=False)
            ),
            *((instance, "deleted") for instance in session.deleted),
        ]
        rows = [
            self.row_for(self.envelope_for(instance, instance.bridge_action(change)))
            for instance, change in changes
            if isinstance(instance, Synced)
        ]
        if rows:
            self._write(session, rows)

    def _write(self, session: Session, rows: list[dict[str, Any]]) -> None:
        # The table's statement trigger sends the NOTIFY (bridge.schema.OUTBOX_NOTIFY_DDL).
        session.connection().execute(insert(outbox_table), rows)
        session.info[_CAPTURED_KEY] = True

    def _after_commit(self, session: Session) -> None:
        captured = session.info.pop(_CAPTURED_KEY, False)
        if captured:
            for callback in list(self._listeners):
                callback()

    def _after_rollback(self, session: Session) -> None:
        session.info.pop(_SKIP_NEXT_FLUSH_KEY, None)
        session.info.pop(_CAPTURED_KEY, None)

    async def emit_snapshots(self, session: AsyncSession, instances: Sequence[Synced]) -> int:
        """Re-state rows as they are now: one outbox row per instance, in the caller's
        transaction, action ``bridge_action("updated")`` (a tombstone: ``deleted``).

        Used by backfill and reconciliation.  The payload carries the row's stored
        version, so a receiver that applies last-writer-wins treats a re-stated row
        it already holds as the same version (no change) and never lets it
        overwrite newer data.  Returns the number of outbox rows written.
        """
        rows = [
            self.row_for(self.envelope_for(instance, instance.bridge_action("updated")))
            for instance in instances
        ]
        if rows:
            await session.run_sync(lambda s: self._write(s, rows))
        return len(rows)

    async def enqueue(
        self, session: AsyncSession, envelope: Envelope, *, subject: str | None = None
    ) -> None:
        """Add an explicit event (not a row change) in the caller's transaction."""
        await session.run_sync(lambda s: self._write(s, [self.row_for(envelope, subject)]))


def _trace_id(traceparent: str | None) -> str | None:
    """The trace id inside a W3C ``traceparent`` (``00-<trace>-<span>-<flags>``)."""
    if not traceparent:
        return None
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 else None
