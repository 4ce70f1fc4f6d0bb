"""Alembic operations for the bridge's schema in an application's own migrations.

Autogenerate sees the bridge's tables when the application's ``env.py`` targets
them too::

    import bridge.schema
    target_metadata = [app_metadata, bridge.schema.metadata]

It never sees functions and triggers, so a migration installs them explicitly::

    from alembic import op
    import bridge.migrations

    def upgrade() -> None:
        bridge.migrations.create_bridge_tables(op)          # once, first migration
        bridge.migrations.install_capture(op, Product, event_schemas())

    def downgrade() -> None:
        bridge.migrations.drop_capture(op, Product)

Every operation is idempotent.  ``install_capture`` bakes the model's columns,
key, tombstone and its event types' current schema versions into the trigger
(:mod:`bridge.outbox.triggers`); when any of these change, a new migration calls it
again — the start-up check (:mod:`bridge.schema_check`) names the table until it
does.  A migration that must stay reproducible while the model evolves can pass a
frozen copy of the model.

``op`` is Alembic's ``alembic.op`` (anything with ``execute`` and ``get_bind``);
Alembic itself is not a dependency of the library.
"""

from __future__ import annotations

from typing import Any, Protocol

from sqlalchemy import DDL, Connection, text

from bridge.event_schemas import EventSchemas
from bridge.outbox.body import envelope_sql
from bridge.outbox.triggers import (
    CaptureSpec,
    drop_statements,
    install_statements,
)
from bridge.schema import (
    OUTBOX_BODY_CHECK,
    OUTBOX_NOTIFY_DDL,
    OUTBOX_NOTIFY_DROP_DDL,
    metadata,
    record_key_sql,
)

__all__ = [
    "create_bridge_tables",
    "downgrade_outbox_body",
    "drop_bridge_tables",
    "drop_capture",
    "install_capture",
    "record_producer",
    "upgrade_outbox_body",
]


class Operations(Protocol):
    """The part of ``alembic.op`` these functions use."""

    def execute(self, sqltext: Any) -> Any: ...

    def get_bind(self) -> Connection: ...


def _run(op: Operations, statements: tuple[str, ...]) -> None:
    for statement in statements:
        # DDL, not text(): the functions' bodies hold colons (to_char formats).
        op.execute(DDL(statement))  # type: ignore[no-untyped-call]


def create_bridge_tables(op: Operations) -> None:
    """Create every table of :data:`bridge.schema.metadata` that is missing, and the
    outbox's NOTIFY trigger."""
    metadata.create_all(op.get_bind(), checkfirst=True)
    _run(op, OUTBOX_NOTIFY_DDL)


def drop_bridge_tables(op: Operations) -> None:
    """Drop the bridge's tables (and the NOTIFY trigger with the outbox)."""
    _run(op, OUTBOX_NOTIFY_DROP_DDL)
    metadata.drop_all(op.get_bind(), checkfirst=True)
    _run(op, ("DROP FUNCTION IF EXISTS bridge_refuse_truncate()",))


def install_capture(op: Operations, model: type[Any], schemas: EventSchemas | None = None) -> None:
    """Install (or replace) ``model``'s capture trigger, stamping ``schemas``' versions."""
    _run(op, install_statements(CaptureSpec.of(model, schemas)))


def drop_capture(op: Operations, model: type[Any]) -> None:
    """Remove ``model``'s capture trigger and functions: its writes are no longer synced."""
    _run(op, drop_statements(CaptureSpec.of(model)))


def record_producer(op: Operations, app_name: str, subject: str) -> None:
    """Record the producer of writes made outside a bridge session (a bridge start
    records its own; this lets ``psql`` writes work before the first start)."""
    op.execute(
        text(
            "INSERT INTO bridge_capture_settings (singleton, producer, subject) "
            "VALUES (true, :producer, :subject) ON CONFLICT (singleton) DO UPDATE "
            "SET producer = EXCLUDED.producer, subject = EXCLUDED.subject, updated_at = now()"
        ).bindparams(producer=app_name, subject=subject)
    )


def upgrade_outbox_body(op: Operations) -> None:
    """Move an outbox of an earlier layout to the current one (:mod:`bridge.outbox.body`).

    Renames ``payload`` to ``body`` and strips from every row the envelope fields its
    columns hold and the stored ``Nats-Msg-Id`` header; replaces the record index on
    (resource_type, resource_id, id) by the hashed record key; resets the heap's fill factor
    to the default; adds the CHECK constraint ``ck_bridge_outbox_body_layout``
    (:data:`bridge.schema.OUTBOX_BODY_CHECK`).  Rewrites every row once (run it while the
    outbox is small, or in a quiet hour).  Relays of the earlier layout must be stopped
    first: they read ``payload``, which no longer exists, and fail loudly rather than
    publish envelopes without their ids; capture triggers are re-installed in the same
    migration (:func:`install_capture`: their ``INSERT`` names the new column).
    """
    _run(
        op,
        (
            "ALTER TABLE bridge_outbox RENAME COLUMN payload TO body",
            "UPDATE bridge_outbox SET body = body - 'event_id' - 'event_type' "
            "- 'resource_type' - 'resource_id', headers = headers - 'Nats-Msg-Id'",
            "DROP INDEX IF EXISTS ix_bridge_outbox_resource_pending",
            "CREATE INDEX IF NOT EXISTS ix_bridge_outbox_record_pending ON bridge_outbox "
            f"({record_key_sql()}, id) WHERE status = 'pending'",
            "ALTER TABLE bridge_outbox RESET (fillfactor)",
            "ALTER TABLE bridge_outbox ADD CONSTRAINT ck_bridge_outbox_body_layout "
            f"CHECK ({OUTBOX_BODY_CHECK})",
        ),
    )


def downgrade_outbox_body(op: Operations) -> None:
    """Undo :func:`upgrade_outbox_body` (the earlier layout; fill factor left as is)."""
    _run(
        op,
        (
            "ALTER TABLE bridge_outbox DROP CONSTRAINT IF EXISTS ck_bridge_outbox_body_layout",
            "DROP INDEX IF EXISTS ix_bridge_outbox_record_pending",
            "CREATE INDEX IF NOT EXISTS ix_bridge_outbox_resource_pending ON bridge_outbox "
            "(resource_type, resource_id, id) WHERE status = 'pending'",
            f"UPDATE bridge_outbox SET body = {envelope_sql()}, headers = headers || "
            "jsonb_build_object('Nats-Msg-Id', event_id::text)",
            "ALTER TABLE bridge_outbox RENAME COLUMN body TO payload",
        ),
    )
