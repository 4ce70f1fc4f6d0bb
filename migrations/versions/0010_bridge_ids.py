"""bridge ids: the id generator bridge_next_id() and its settings

Revision ID: 0010_bridge_ids
Revises: 0009_outbox_flat
Create Date: 2026-12-03

bridge_id_settings (bridge.schema.id_settings) holds this database's system number
(one row, unset until configured: bridge_next_id() refuses until then); the sequence
bridge_id_tick is the generator's state; bridge_next_id(), bridge_id_advance_past()
and bridge_id_provenance() are bridge.ids.ddl's, so databases created from the
metadata get the same functions.  Downgrade refuses while a column default still
calls bridge_next_id() (PostgreSQL's dependency check), which is what we want.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from bridge.ids.ddl import ID_GENERATOR_DDL, ID_GENERATOR_DROP_DDL
from bridge.ids.scheme import MAX_SYSTEM

revision: str = "0010_bridge_ids"
down_revision: str | None = "0009_outbox_flat"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "bridge_id_settings",
        sa.Column("singleton", sa.Boolean(), primary_key=True, server_default=sa.text("true")),
        sa.Column("system_number", sa.Integer(), nullable=True),
        sa.Column("max_lead_ms", sa.Integer(), nullable=False, server_default=sa.text("10000")),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.CheckConstraint("singleton", name="ck_bridge_id_settings_singleton"),
        sa.CheckConstraint(
            f"system_number BETWEEN 0 AND {MAX_SYSTEM}", name="ck_bridge_id_settings_system_number"
        ),
        sa.CheckConstraint(
            "max_lead_ms BETWEEN 0 AND 3600000", name="ck_bridge_id_settings_max_lead_ms"
        ),
    )
    connection = op.get_bind()
    for statement in ID_GENERATOR_DDL:
        # The driver's own text: the functions' % (RAISE, modulo) and :: stay as written.
        connection.exec_driver_sql(statement)


def downgrade() -> None:
    connection = op.get_bind()
    for statement in ID_GENERATOR_DROP_DDL:
        connection.exec_driver_sql(statement)
    op.drop_table("bridge_id_settings")
