"""The bridge's own tables: the outbox (producer side), the inbox (consumer side) and
the backfill checkpoints.

They live in :data:`metadata`, separate from the application's models, so an
application's Alembic environment targets ``[app_metadata, bridge.schema.metadata]``
and the bridge never touches tables it does not own.

Outbox row life cycle: ``pending`` → (claimed by a relay: lease columns set) →
``sent``; or after ``max_attempts`` failed publishes → ``failed`` (visible and
re-queueable).  Inbox record life cycle: ``processed`` (committed in the same
transaction as the handler's writes), ``failed`` (last attempt failed or was held
back, will be redelivered at ``retry_at``), ``dead_lettered`` (sent to the DLQ; not
"processed").
Backfill checkpoint: one row per (run, table), advanced in the same transaction as
the outbox rows of each batch (:mod:`bridge.reconcile.backfill`).
``bridge_reconcile_runs`` keeps one row per reconciliation pass
(:mod:`bridge.reconcile.reconciler`).
``bridge_console_audit`` keeps one row per operator console action — sign-in,
replay, purge, done, failed or refused (:mod:`bridge.integrations.console.audit`).
``bridge_sync_conflicts`` and ``bridge_sync_stale_events`` keep what last-writer-wins
reports (:mod:`bridge.sync.lww`).
``bridge_capture_settings`` holds the database's producer (app name and publish
subject) for writes the capture triggers see outside a bridge session
(:mod:`bridge.outbox.triggers`); one row at most.

Creating them: :func:`create_all` (tests, quick starts: the tables, the outbox's
NOTIFY trigger and the capture triggers of the models given), or in an
application's Alembic migrations the operations of :mod:`bridge.migrations`.
Autogenerate sees the tables when ``env.py`` includes :data:`metadata` in
``target_metadata``; it never sees triggers, which is why they are explicit
operations and not ``after_create`` hooks.
``bridge_id_settings`` holds this database's system number for the id generator
``bridge_next_id()`` (:mod:`bridge.ids`), installed with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    DDL,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    event,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

from bridge.ids.ddl import ID_GENERATOR_DDL
from bridge.ids.scheme import MAX_SYSTEM

if TYPE_CHECKING:
    from sqlalchemy import Connection
    from sqlalchemy.ext.asyncio import AsyncEngine

    from bridge.event_schemas import EventSchemas

metadata = MetaData()

OUTBOX_PENDING = "pending"
OUTBOX_SENT = "sent"
OUTBOX_FAILED = "failed"

INBOX_PROCESSED = "processed"
INBOX_FAILED = "failed"
INBOX_DEAD_LETTERED = "dead_lettered"

#: Postgres NOTIFY channel used to wake relays in other processes on commit.
OUTBOX_CHANNEL = "bridge_outbox"


def record_key_sql(alias: str = "") -> str:
    """SQL of an outbox row's *record key*: a 64-bit hash of (resource_type,
    resource_id), the leading column of ``ix_bridge_outbox_record_pending``.

    The relay finds a record's other pending rows through it (and compares the two
    columns too: a hash collision costs a heap fetch, never a wrong answer).  Why a
    hash: the index on the two text columns was ~112 bytes per row, the hash ~44.
    """
    q = f"{alias}." if alias else ""
    # Spelled as PostgreSQL reflects the index's expression, so that Alembic's
    # autogenerate comparison sees the metadata's index as the database's.
    key = f"({q}resource_type::text || '/'::text) || {q}resource_id::text"
    return f"hashtextextended({key}, 0::bigint)"


#: Envelope fields an outbox row holds in its columns and never in ``body``
#: (:mod:`bridge.outbox.body`).
OUTBOX_COLUMN_FIELDS = ("event_id", "event_type", "resource_type", "resource_id")
#: ``body`` is a JSON object without :data:`OUTBOX_COLUMN_FIELDS`: a row written by hand
#: with a whole envelope is refused at its INSERT, not published with those fields
#: twice (which every consumer would dead-letter as malformed: duplicate keys).
OUTBOX_BODY_CHECK = "jsonb_typeof(body) = 'object' AND NOT (body ?| ARRAY[{}])".format(
    ", ".join(f"'{name}'" for name in OUTBOX_COLUMN_FIELDS)
)

outbox = Table(
    "bridge_outbox",
    metadata,
    # Monotonic id: the relay publishes rows of one resource in id order.
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("event_id", UUID(as_uuid=False), nullable=False, unique=True),
    Column("subject", String(255), nullable=False),
    Column("event_type", String(128), nullable=False),
    Column("resource_type", String(128), nullable=False),
    Column("resource_id", String(255), nullable=False),
    # Headers other than Nats-Msg-Id (the relay sets it from event_id); usually {}.
    Column("headers", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    # The envelope less the fields the columns above hold (bridge.outbox.body).
    Column("body", JSONB, nullable=False),
    Column("status", String(16), nullable=False, server_default=OUTBOX_PENDING),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_expires_at", DateTime(timezone=True), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("stream_seq", BigInteger, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("sent_at", DateTime(timezone=True), nullable=True),
    Index(
        "ix_bridge_outbox_due",
        "next_attempt_at",
        "id",
        postgresql_where=text("status = 'pending'"),
    ),
    Index(
        "ix_bridge_outbox_record_pending",
        text(record_key_sql()),
        "id",
        postgresql_where=text("status = 'pending'"),
    ),
    Index("ix_bridge_outbox_sent_at", "sent_at", postgresql_where=text("status = 'sent'")),
    CheckConstraint(OUTBOX_BODY_CHECK, name="ck_bridge_outbox_body_layout"),
)

#: Statement-level trigger: every INSERT into the outbox notifies OUTBOX_CHANNEL.
#: NOTIFY is transactional (delivered on commit, dropped on rollback, folded within a
#: transaction), so relays in other processes wake exactly when rows become visible,
#: and the capture path pays no extra round trip for it.
OUTBOX_NOTIFY_DDL: tuple[str, ...] = (
    f"""
    CREATE OR REPLACE FUNCTION bridge_outbox_notify() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('{OUTBOX_CHANNEL}', '');
        RETURN NULL;
    END $$
    """,
    "DROP TRIGGER IF EXISTS bridge_outbox_notify ON bridge_outbox",
    """
    CREATE TRIGGER bridge_outbox_notify AFTER INSERT ON bridge_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION bridge_outbox_notify()
    """,
)
OUTBOX_NOTIFY_DROP_DDL: tuple[str, ...] = (
    "DROP TRIGGER IF EXISTS bridge_outbox_notify ON bridge_outbox",
    "DROP FUNCTION IF EXISTS bridge_outbox_notify()",
)

inbox = Table(
    "bridge_inbox",
    metadata,
    Column("event_id", UUID(as_uuid=False), primary_key=True),
    Column("subject", String(255), nullable=False),
    Column("event_type", String(128), nullable=True),
    Column("resource_type", String(128), nullable=True),
    Column("resource_id", String(255), nullable=True),
    Column("stream_seq", BigInteger, nullable=True),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("last_error", Text, nullable=True),
    Column("received_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("processed_at", DateTime(timezone=True), nullable=True),
    # When a ``failed`` record's delivery comes back (its NAK delay): later events of
    # its record are held back until then (bridge.inbox._order, per-record order).
    Column("retry_at", DateTime(timezone=True), nullable=True),
    Index("ix_bridge_inbox_status", "status"),
    Index("ix_bridge_inbox_processed_at", "processed_at"),
    # The claim's one look-up of waiting records of the batch's resources; only
    # ``failed`` records are indexed, so it stays tiny and cheap to maintain.
    Index(
        "ix_bridge_inbox_failed_resource",
        "resource_type",
        "resource_id",
        postgresql_where=text("status = 'failed'"),
    ),
)

#: Backfill checkpoints: how far run ``run_name`` has re-emitted ``table_name``
#: (``last_key``: the primary key of the last emitted row, as strings) — see
#: bridge.reconcile.backfill.
backfill_runs = Table(
    "bridge_backfill_runs",
    metadata,
    Column("run_name", String(128), primary_key=True),
    Column("table_name", String(255), primary_key=True),
    Column("resource_type", String(128), nullable=False),
    Column("last_key", JSONB, nullable=True),
    Column("rows_emitted", BigInteger, nullable=False, server_default="0"),
    Column("started_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("finished_at", DateTime(timezone=True), nullable=True),
)

#: One row per reconciliation pass (periodic or ``bridge reconcile``), for /sync_status.
reconcile_runs = Table(
    "bridge_reconcile_runs",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("peer", String(255), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=False),
    Column("duration_seconds", Float, nullable=False),
    Column("ranges_compared", Integer, nullable=False),
    Column("rows_compared", Integer, nullable=False),
    Column("repaired_to_peer", Integer, nullable=False),
    Column("repaired_from_peer", Integer, nullable=False),
    Column("unresolved", Integer, nullable=False),
    Column("requests", Integer, nullable=False),
    Column("bytes_sent", BigInteger, nullable=False),
    Column("bytes_received", BigInteger, nullable=False),
    Column("error", Text, nullable=True),
    Index("ix_bridge_reconcile_runs_started_at", "started_at"),
)

#: The operator console's audit trail (bridge.integrations.console.audit): who did
#: what to which dead letters, and how it ended; append-only.
console_audit = Table(
    "bridge_console_audit",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("app", String(64), nullable=False),
    Column("actor", String(64), nullable=False),
    Column("client", String(128), nullable=True),
    Column("action", String(32), nullable=False),
    Column("target", Text, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("detail", Text, nullable=True),
    Index("ix_bridge_console_audit_at", "at"),
)

#: The id generator's settings (bridge.ids): exactly one row (``singleton``), holding the
#: number of this database among the synced systems and how far ahead of the clock the
#: generator may run before it refuses (``max_lead_ms``).  The function, its state
#: sequence and the row are installed right after the table (ID_GENERATOR_DDL).
id_settings = Table(
    "bridge_id_settings",
    metadata,
    Column("singleton", Boolean, primary_key=True, server_default=text("true")),
    Column("system_number", Integer, nullable=True),
    Column("max_lead_ms", Integer, nullable=False, server_default=text("10000")),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("singleton", name="ck_bridge_id_settings_singleton"),
    CheckConstraint(
        f"system_number BETWEEN 0 AND {MAX_SYSTEM}", name="ck_bridge_id_settings_system_number"
    ),
    CheckConstraint("max_lead_ms BETWEEN 0 AND 3600000", name="ck_bridge_id_settings_max_lead_ms"),
)
for _statement in ID_GENERATOR_DDL:
    # DDL() formats its text with %: the functions' own % (RAISE, modulo) are escaped.
    event.listen(id_settings, "after_create", DDL(_statement.replace("%", "%%")))  # type: ignore[no-untyped-call]


#: What last-writer-wins reports (bridge.sync.lww's default recorders): a natural-key
#: collision between two different records (each also dead-lettered, recorded in its own
#: transaction) and an incoming version older than the stored one (acked, recorded in
#: the handler's transaction).  One row per event (a redelivery records nothing more);
#: keys and versions as text / JSON, so a table of any key type fits.
sync_conflicts = Table(
    "bridge_sync_conflicts",
    metadata,
    Column("event_id", UUID(as_uuid=False), primary_key=True),
    Column("resource_type", String(128), nullable=False),
    Column("key_name", String(255), nullable=False),
    Column("key_value", Text, nullable=False),
    Column("local_id", Text, nullable=False),
    Column("incoming_id", Text, nullable=False),
    Column("incoming_origin", String(64), nullable=False),
    Column("local_values", JSONB, nullable=False),
    Column("incoming_values", JSONB, nullable=False),
    Column("detected_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_bridge_sync_conflicts_detected_at", "detected_at"),
)

sync_stale_events = Table(
    "bridge_sync_stale_events",
    metadata,
    Column("event_id", UUID(as_uuid=False), primary_key=True),
    Column("resource_type", String(128), nullable=False),
    Column("resource_id", String(255), nullable=False),
    Column("producer", String(64), nullable=False),
    # {version column: JSON value}, the order of the model's __bridge_version__
    Column("incoming_version", JSONB, nullable=False),
    Column("local_version", JSONB, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_bridge_sync_stale_events_received_at", "received_at"),
)


#: The producer of writes the capture triggers see outside a bridge session: recorded by
#: :meth:`bridge.outbox.capture.Outbox.record_producer` (at every bridge start).
capture_settings = Table(
    "bridge_capture_settings",
    metadata,
    Column("singleton", Boolean, primary_key=True, server_default=text("true")),
    Column("producer", String(128), nullable=False),
    Column("subject", String(255), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("singleton", name="ck_bridge_capture_settings_singleton"),
)


async def create_all(
    engine: AsyncEngine,
    *,
    models: Sequence[type[Any]] = (),
    schemas: EventSchemas | None = None,
) -> None:
    """Create the bridge tables and the outbox's NOTIFY trigger; with ``models`` (mapped
    :class:`~bridge.outbox.capture.Synced` classes) also their tables when missing and
    their capture triggers, stamping the versions of ``schemas`` (an
    :class:`~bridge.event_schemas.EventSchemas`; undeclared types: 1).  Idempotent.
    For tests and quick starts; an application's migrations use :mod:`bridge.migrations`.
    """
    # Imported here: the envelope's limits read this module's tables at import time.
    from bridge.outbox.triggers import CaptureSpec, install_statements

    specs = [CaptureSpec.of(model, schemas) for model in models]
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
        for statement in OUTBOX_NOTIFY_DDL:
            await conn.execute(DDL(statement))  # type: ignore[no-untyped-call]
        for spec in specs:
            await conn.run_sync(_create_table, spec.table)
            for statement in install_statements(spec):
                await conn.execute(DDL(statement))  # type: ignore[no-untyped-call]


def _create_table(connection: Connection, table: Table) -> None:
    table.metadata.create_all(connection, tables=[table])
