"""outbox NOTIFY trigger: relays in other processes wake on commit

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29

A statement-level AFTER INSERT trigger on bridge_outbox runs
pg_notify('bridge_outbox') — the capture path no longer sends its own NOTIFY
round trip.  The DDL is bridge.schema's, so tests that create tables from the
metadata get the same trigger.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from bridge.schema import OUTBOX_NOTIFY_DDL, OUTBOX_NOTIFY_DROP_DDL

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for statement in OUTBOX_NOTIFY_DDL:
        op.execute(statement)


def downgrade() -> None:
    for statement in OUTBOX_NOTIFY_DROP_DDL:
        op.execute(statement)
