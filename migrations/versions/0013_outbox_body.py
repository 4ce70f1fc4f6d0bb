"""outbox body: the envelope stored once, a hashed record index, default fill factor

Revision ID: 0013_outbox_body
Revises: 0012_numeric_ids
Create Date: 2026-12-22

bridge_outbox.payload becomes body: the envelope less event_id, event_type,
resource_type and resource_id, which its columns already hold (the relay splices them
back in: bridge.outbox.body), and headers lose the stored Nats-Msg-Id (the relay sets
it from event_id). The record index on (resource_type, resource_id, id) becomes one on
a 64-bit hash of the two columns, and the fill factor of 0009 is reset to the default:
an outbox row with its indexes goes from ~1.6 KB to under 1 KB for a ~300 B payload
(docs/BENCHMARKS.md). Every row is rewritten once. Stop the relays first; the capture
triggers are re-installed here (their INSERT names the new column).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from bridge import migrations as bridge_migrations
from services.shared.event_versions import event_schemas
from services.shared.models import Organization, User

revision: str = "0013_outbox_body"
down_revision: str | None = "0012_numeric_ids"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    bridge_migrations.upgrade_outbox_body(op)
    schemas = event_schemas()
    for model in (Organization, User):
        bridge_migrations.install_capture(op, model, schemas)


def downgrade() -> None:
    bridge_migrations.downgrade_outbox_body(op)
