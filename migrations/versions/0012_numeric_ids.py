"""numeric ids: organizations and users get BIGINT ids from bridge_next_id()

Revision ID: 0012_numeric_ids
Revises: 0011_sync_records
Create Date: 2026-12-21

The services' ids become integers (docs/IDENTITIES.md): organizations.id and users.id
are BIGINT with the default bridge_next_id(), users.organization_id a BIGINT foreign
key, and the services' bookkeeping (sync_conflicts.local_id / incoming_id,
sync_stale_events.resource_id) holds them as BIGINT too.

Only empty tables are converted.  A database of the UUID era that holds rows is
REFUSED, with a message saying what to do, and nothing is changed: a UUID has no
integer of its own, and converting each side on its own would give one record two
different ids (each database's generator issues its own), after which the systems
would treat every record as two — duplicates on both sides and natural-key conflicts.
The way over is to export the records, empty the tables on BOTH sides, migrate, and
create the records again through one system's API (the bridge then copies them, with
the new ids, to the other).  Downgrade likewise only converts empty tables back.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op
from sqlalchemy import text

revision: str = "0012_numeric_ids"
down_revision: str | None = "0011_sync_records"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Every table whose columns change, in an order that locks parents first.
TABLES = ("organizations", "users", "sync_conflicts", "sync_stale_events")
#: (table, column) converted, ids first (their default follows).
COLUMNS = (
    ("organizations", "id"),
    ("users", "id"),
    ("users", "organization_id"),
    ("sync_conflicts", "local_id"),
    ("sync_conflicts", "incoming_id"),
    ("sync_stale_events", "resource_id"),
)
FOREIGN_KEY = "fk_users_organization_id_organizations"
WITH_DEFAULT = ("organizations", "users")

REFUSAL = (
    "0012_numeric_ids refuses to convert ids while tables hold rows ({counts}). "
    "Ids become integers issued by each system's own generator, so a UUID-era record "
    "cannot be given one id that both systems agree on by converting each database on "
    "its own: the two sides would hold the same record under two different ids and "
    "treat it as two records. What to do: export the records (GET /organizations, "
    "GET /users), stop both services, on BOTH databases run TRUNCATE users, "
    "organizations, sync_conflicts, sync_stale_events, and the outbox and inbox of the "
    "UUID era if you do not need them (TRUNCATE bridge_outbox, bridge_inbox), run the "
    "migrations, start the services, and create the records again through one system's "
    "API; the bridge copies them, with their new ids, to the other (docs/IDENTITIES.md)."
)


def _refuse_unless_empty(direction: str) -> None:
    connection = op.get_bind()
    # Locked first, so no row can arrive between the count and the conversion.
    connection.execute(text(f"LOCK TABLE {', '.join(TABLES)} IN ACCESS EXCLUSIVE MODE"))
    counts = {
        table: int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
        for table in TABLES
    }
    held = {table: n for table, n in counts.items() if n}
    if held:
        shown = ", ".join(f"{table}: {n}" for table, n in held.items())
        message = REFUSAL.format(counts=shown)
        if direction == "down":
            message = (
                f"0012_numeric_ids downgrade refuses while tables hold rows ({shown}): "
                "integer ids have no UUID; empty the tables first"
            )
        raise RuntimeError(message)


def _convert(sql_type: str) -> None:
    op.drop_constraint(FOREIGN_KEY, "users", type_="foreignkey")
    for table in WITH_DEFAULT:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN id DROP DEFAULT")
    for table, column in COLUMNS:
        # The tables are empty (checked under lock): the USING expression never runs.
        op.execute(
            f"ALTER TABLE {table} ALTER COLUMN {column} TYPE {sql_type} USING NULL::{sql_type}"
        )
    op.create_foreign_key(FOREIGN_KEY, "users", "organizations", ["organization_id"], ["id"])


def upgrade() -> None:
    _refuse_unless_empty("up")
    _convert("bigint")
    for table in WITH_DEFAULT:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN id SET DEFAULT bridge_next_id()")


def downgrade() -> None:
    _refuse_unless_empty("down")
    _convert("uuid")
