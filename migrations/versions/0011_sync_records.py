"""sync records: what last-writer-wins reports, in the bridge's own tables

Revision ID: 0011_sync_records
Revises: 0010_bridge_ids
Create Date: 2026-12-20

bridge_sync_conflicts and bridge_sync_stale_events (bridge.schema) are where the
library's last-writer-wins applier (bridge.sync.lww) records natural-key conflicts and
stale events by default, for any key type (ids and versions as text / JSON).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0011_sync_records"
down_revision: str | None = "0010_bridge_ids"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "bridge_sync_conflicts",
        sa.Column("event_id", postgresql.UUID(as_uuid=False), primary_key=True),
        sa.Column("resource_type", sa.String(128), nullable=False),
        sa.Column("key_name", sa.String(255), nullable=False),
        sa.Column("key_value", sa.Text(), nullable=False),
        sa.Column("local_id", sa.Text(), nullable=False),
        sa.Column("incoming_id", sa.Text(), nullable=False),
        sa.Column("incoming_origin", sa.String(64), nullable=False),
        sa.Column("local_values", postgresql.JSONB(), nullable=False),
        sa.Column("incoming_values", postgresql.JSONB(), nullable=False),
        sa.Column(
            "detected_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    op.create_index(
        "ix_bridge_sync_conflicts_detected_at", "bridge_sync_conflicts", ["detected_at"]
    )
    op.create_table(
        "bridge_sync_stale_events",
        sa.Column("event_id", postgresql.UUID(as_uuid=False), primary_key=True),
        sa.Column("resource_type", sa.String(128), nullable=False),
        sa.Column("resource_id", sa.String(255), nullable=False),
        sa.Column("producer", sa.String(64), nullable=False),
        sa.Column("incoming_version", postgresql.JSONB(), nullable=False),
        sa.Column("local_version", postgresql.JSONB(), nullable=False),
        sa.Column(
            "received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    op.create_index(
        "ix_bridge_sync_stale_events_received_at", "bridge_sync_stale_events", ["received_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_bridge_sync_stale_events_received_at", table_name="bridge_sync_stale_events")
    op.drop_table("bridge_sync_stale_events")
    op.drop_index("ix_bridge_sync_conflicts_detected_at", table_name="bridge_sync_conflicts")
    op.drop_table("bridge_sync_conflicts")
