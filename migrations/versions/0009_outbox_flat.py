"""outbox flat: heap fill factor so the relay's lease update stays HOT

Revision ID: 0009_outbox_flat
Revises: 0007_capture_triggers
Create Date: 2026-12-03

bridge_outbox gets fillfactor = bridge.schema.OUTBOX_FILLFACTOR (70): inserts leave
room on each heap page, so leasing a row (lease_owner, lease_expires_at: no index
uses them) is a HOT update that adds no index entry. Only rows inserted (or pages
rewritten) after the upgrade are laid out with it; a VACUUM FULL or pg_repack
rewrites an existing table, not needed for correctness. No column changes.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009_outbox_flat"
down_revision: str | None = "0007_capture_triggers"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# the value at the time of this revision (bridge.schema may change it later)
FILLFACTOR = 70


def upgrade() -> None:
    op.execute(f"ALTER TABLE bridge_outbox SET (fillfactor = {FILLFACTOR})")


def downgrade() -> None:
    op.execute("ALTER TABLE bridge_outbox RESET (fillfactor)")
