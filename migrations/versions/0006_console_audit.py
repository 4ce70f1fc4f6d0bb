"""console audit: one row per operator console action

Revision ID: 0006_console_audit
Revises: 0005_inbox_failed_record_order
Create Date: 2026-12-10

bridge_console_audit (bridge.schema.console_audit) is the operator console's audit
trail (bridge.integrations.console.audit): sign-ins, dead-letter replays and purges,
done, failed or refused, with who, from where and on which letters.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_console_audit"
down_revision: str | None = "0005_inbox_failed_record_order"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "bridge_console_audit",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("app", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("client", sa.String(128), nullable=True),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
    )
    op.create_index("ix_bridge_console_audit_at", "bridge_console_audit", ["at"])


def downgrade() -> None:
    op.drop_index("ix_bridge_console_audit_at", table_name="bridge_console_audit")
    op.drop_table("bridge_console_audit")
