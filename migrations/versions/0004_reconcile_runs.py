"""reconcile runs: one row per anti-entropy reconciliation pass

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29

bridge_reconcile_runs (bridge.schema.reconcile_runs) feeds /sync_status's
``reconciliation`` block, for periodic and ``bridge reconcile`` passes alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "bridge_reconcile_runs",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("peer", sa.String(255), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_seconds", sa.Float(), nullable=False),
        sa.Column("ranges_compared", sa.Integer(), nullable=False),
        sa.Column("rows_compared", sa.Integer(), nullable=False),
        sa.Column("repaired_to_peer", sa.Integer(), nullable=False),
        sa.Column("repaired_from_peer", sa.Integer(), nullable=False),
        sa.Column("unresolved", sa.Integer(), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("bytes_sent", sa.BigInteger(), nullable=False),
        sa.Column("bytes_received", sa.BigInteger(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
    )
    op.create_index("ix_bridge_reconcile_runs_started_at", "bridge_reconcile_runs", ["started_at"])


def downgrade() -> None:
    op.drop_index("ix_bridge_reconcile_runs_started_at", table_name="bridge_reconcile_runs")
    op.drop_table("bridge_reconcile_runs")
