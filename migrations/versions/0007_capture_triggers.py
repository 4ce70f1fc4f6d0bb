"""capture triggers: every write to organizations and users reaches the outbox

Revision ID: 0007_capture_triggers
Revises: 0006_console_audit
Create Date: 2026-12-12

Capture moves from the ORM's flush into PostgreSQL: a row trigger per synced table
writes the outbox row of every INSERT, UPDATE and DELETE in the writer's transaction
(bulk and Core statements, raw SQL and psql sessions included), stamping the
services' current event versions.  bridge_capture_settings records the producer of
writes made outside a bridge session (each bridge start fills it in).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from bridge import migrations as bridge_migrations
from services.shared.event_versions import event_schemas
from services.shared.models import Organization, User

revision: str = "0007_capture_triggers"
down_revision: str | None = "0006_console_audit"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "bridge_capture_settings",
        sa.Column("singleton", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("producer", sa.String(128), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint("singleton", name="ck_bridge_capture_settings_singleton"),
        sa.PrimaryKeyConstraint("singleton"),
    )
    schemas = event_schemas()
    for model in (Organization, User):
        bridge_migrations.install_capture(op, model, schemas)


def downgrade() -> None:
    for model in (User, Organization):
        bridge_migrations.drop_capture(op, model)
    op.execute("DROP FUNCTION IF EXISTS bridge_refuse_truncate()")
    op.drop_table("bridge_capture_settings")
