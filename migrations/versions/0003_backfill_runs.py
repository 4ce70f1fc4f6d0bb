"""backfill checkpoints: bridge_backfill_runs

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

One row per (backfill run, table): the primary key of the last re-emitted row and
the rows emitted so far, advanced in the same transaction as each batch's outbox
rows (bridge.reconcile.backfill), so an interrupted backfill resumes where it stopped.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "bridge_backfill_runs",
        sa.Column("run_name", sa.String(length=128), nullable=False),
        sa.Column("table_name", sa.String(length=255), nullable=False),
        sa.Column("resource_type", sa.String(length=128), nullable=False),
        sa.Column("last_key", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("rows_emitted", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column(
            "started_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("run_name", "table_name"),
    )


def downgrade() -> None:
    op.drop_table("bridge_backfill_runs")
