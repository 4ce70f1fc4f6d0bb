"""inbox per-record order across batches: retry_at on failed records, partial index

Revision ID: 0005_inbox_failed_record_order
Revises: 0004
Create Date: 2026-12-02

``bridge_inbox.retry_at`` is when a ``failed`` record's delivery comes back (its NAK
delay); the consumer holds back a later event of the same record until then
(bridge.inbox._apply).  ``ix_bridge_inbox_failed_resource`` indexes only ``failed``
records, by (resource_type, resource_id): the one look-up per batch.  Records that
were ``failed`` before this migration have no ``retry_at`` and hold nothing back.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_inbox_failed_record_order"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("bridge_inbox", sa.Column("retry_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_bridge_inbox_failed_resource",
        "bridge_inbox",
        ["resource_type", "resource_id"],
        unique=False,
        postgresql_where=sa.text("status = 'failed'"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_bridge_inbox_failed_resource",
        table_name="bridge_inbox",
        postgresql_where=sa.text("status = 'failed'"),
    )
    op.drop_column("bridge_inbox", "retry_at")
