"""initial schema: domain, sync bookkeeping, bridge outbox and inbox

Revision ID: 0001
Revises:
Create Date: 2026-11-29

Domain tables (organizations, users; soft delete with partial unique indexes on the
natural keys), the sync bookkeeping (sync_conflicts, sync_stale_events) and the
bridge's own tables exactly as bridge.schema declares them (bridge_outbox,
bridge_inbox and their indexes).  tests/integration/test_api_migrations.py checks
that the migrated schema equals the metadata (autogenerate finds no difference).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "organizations",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("domain", sa.String(length=255), nullable=False),
        sa.Column("active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("origin", sa.String(length=64), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_organizations")),
    )
    op.create_index(
        "uq_organizations_domain_live",
        "organizations",
        ["domain"],
        unique=True,
        postgresql_where=sa.text("deleted_at IS NULL"),
    )
    op.create_table(
        "sync_conflicts",
        sa.Column("event_id", sa.UUID(), nullable=False),
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("key_name", sa.String(length=64), nullable=False),
        sa.Column("key_value", sa.String(length=320), nullable=False),
        sa.Column("local_id", sa.UUID(), nullable=False),
        sa.Column("incoming_id", sa.UUID(), nullable=False),
        sa.Column("incoming_origin", sa.String(length=64), nullable=False),
        sa.Column("local_values", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("incoming_values", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "detected_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_sync_conflicts")),
    )
    op.create_table(
        "sync_stale_events",
        sa.Column("event_id", sa.UUID(), nullable=False),
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("resource_id", sa.UUID(), nullable=False),
        sa.Column("incoming_updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("incoming_origin", sa.String(length=64), nullable=False),
        sa.Column("local_updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("local_origin", sa.String(length=64), nullable=False),
        sa.Column(
            "received_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_sync_stale_events")),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("organization_id", sa.UUID(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("origin", sa.String(length=64), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_users_organization_id_organizations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
    )
    op.create_index(op.f("ix_users_organization_id"), "users", ["organization_id"], unique=False)
    op.create_index(
        "uq_users_email_live",
        "users",
        ["email"],
        unique=True,
        postgresql_where=sa.text("deleted_at IS NULL"),
    )
    op.create_table(
        "bridge_inbox",
        sa.Column("event_id", sa.UUID(as_uuid=False), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("event_type", sa.String(length=128), nullable=True),
        sa.Column("resource_type", sa.String(length=128), nullable=True),
        sa.Column("resource_id", sa.String(length=255), nullable=True),
        sa.Column("stream_seq", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column(
            "received_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("event_id"),
    )
    op.create_index("ix_bridge_inbox_processed_at", "bridge_inbox", ["processed_at"], unique=False)
    op.create_index("ix_bridge_inbox_status", "bridge_inbox", ["status"], unique=False)
    op.create_table(
        "bridge_outbox",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.UUID(as_uuid=False), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("event_type", sa.String(length=128), nullable=False),
        sa.Column("resource_type", sa.String(length=128), nullable=False),
        sa.Column("resource_id", sa.String(length=255), nullable=False),
        sa.Column(
            "headers",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "next_attempt_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("stream_seq", sa.BigInteger(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_id"),
    )
    op.create_index(
        "ix_bridge_outbox_due",
        "bridge_outbox",
        ["next_attempt_at", "id"],
        unique=False,
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        "ix_bridge_outbox_resource_pending",
        "bridge_outbox",
        ["resource_type", "resource_id", "id"],
        unique=False,
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        "ix_bridge_outbox_sent_at",
        "bridge_outbox",
        ["sent_at"],
        unique=False,
        postgresql_where=sa.text("status = 'sent'"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_bridge_outbox_sent_at",
        table_name="bridge_outbox",
        postgresql_where=sa.text("status = 'sent'"),
    )
    op.drop_index(
        "ix_bridge_outbox_resource_pending",
        table_name="bridge_outbox",
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.drop_index(
        "ix_bridge_outbox_due",
        table_name="bridge_outbox",
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.drop_table("bridge_outbox")
    op.drop_index("ix_bridge_inbox_status", table_name="bridge_inbox")
    op.drop_index("ix_bridge_inbox_processed_at", table_name="bridge_inbox")
    op.drop_table("bridge_inbox")
    op.drop_index(
        "uq_users_email_live", table_name="users", postgresql_where=sa.text("deleted_at IS NULL")
    )
    op.drop_index(op.f("ix_users_organization_id"), table_name="users")
    op.drop_table("users")
    op.drop_table("sync_stale_events")
    op.drop_table("sync_conflicts")
    op.drop_index(
        "uq_organizations_domain_live",
        table_name="organizations",
        postgresql_where=sa.text("deleted_at IS NULL"),
    )
    op.drop_table("organizations")
