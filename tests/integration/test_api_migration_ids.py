"""Migration 0012 (numeric ids): empty tables are converted, a UUID-era database with
rows is refused with what to do, and nothing of it is changed."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.shared.db import configure_identities, migrate

ID_COLUMNS = {
    ("organizations", "id"),
    ("users", "id"),
    ("users", "organization_id"),
    ("sync_conflicts", "local_id"),
    ("sync_conflicts", "incoming_id"),
    ("sync_stale_events", "resource_id"),
}


async def _columns(engine: AsyncEngine) -> dict[tuple[str, str], tuple[str, str | None]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT table_name, column_name, data_type, column_default "
                "FROM information_schema.columns WHERE table_schema = 'public'"
            )
        )
        return {(r.table_name, r.column_name): (r.data_type, r.column_default) for r in rows}


async def _revision(engine: AsyncEngine) -> str:
    async with engine.connect() as conn:
        return str(await conn.scalar(text("SELECT version_num FROM alembic_version")))


async def test_empty_tables_are_converted_to_bigint_ids(database_url: str) -> None:
    await migrate(database_url, "0011_sync_records")
    await migrate(database_url)
    engine = create_async_engine(database_url)
    try:
        columns = await _columns(engine)
        for key in ID_COLUMNS:
            assert columns[key][0] == "bigint", key
        assert columns[("organizations", "id")][1] == "bridge_next_id()"
        assert columns[("users", "id")][1] == "bridge_next_id()"
        assert columns[("users", "organization_id")][1] is None
        await configure_identities(engine, 2)
        now = datetime.now(UTC)
        async with engine.begin() as conn:
            # A psql-style insert takes its id from the database, and the foreign key holds.
            await conn.execute(text("SET LOCAL bridge.capture = 'off'"))
            org_id = await conn.scalar(
                text(
                    "INSERT INTO organizations (name, domain, created_at, updated_at, origin) "
                    "VALUES ('Acme', 'acme.test', :now, :now, 'system_b') RETURNING id"
                ),
                {"now": now},
            )
            with pytest.raises(Exception, match="fk_users_organization_id_organizations"):
                async with conn.begin_nested():
                    await conn.execute(
                        text(
                            "INSERT INTO users (organization_id, name, email, role, "
                            "created_at, updated_at, origin) VALUES (:org, 'U', 'u@x.test', "
                            "'member', :now, :now, 'system_b')"
                        ),
                        {"org": org_id + 64, "now": now},
                    )
        assert isinstance(org_id, int) and org_id & 63 == 2  # System B's number in it
    finally:
        await engine.dispose()


async def test_a_uuid_era_database_with_rows_is_refused_unchanged(database_url: str) -> None:
    await migrate(database_url, "0011_sync_records")
    engine = create_async_engine(database_url)
    org_id = uuid.uuid4()
    now = datetime.now(UTC)
    try:
        async with engine.begin() as conn:
            # Written as the UUID-era API did; capture off (no outbox row needed here).
            await conn.execute(text("SET LOCAL bridge.capture = 'off'"))
            await conn.execute(
                text(
                    "INSERT INTO organizations (id, name, domain, created_at, updated_at, "
                    "origin) VALUES (:id, 'Old', 'old.test', :now, :now, 'system_a')"
                ),
                {"id": org_id, "now": now},
            )
        with pytest.raises(Exception, match="refuses to convert ids") as caught:
            await migrate(database_url)
        message = str(caught.value)
        assert "organizations: 1" in message and "users" not in message.split("(")[1][:20]
        assert "two different ids" in message and "TRUNCATE" in message
        assert "create the records again through one system's API" in message
        # Nothing changed: still the UUID era, the row still there.
        assert await _revision(engine) == "0011_sync_records"
        assert (await _columns(engine))[("organizations", "id")][0] == "uuid"
        async with engine.connect() as conn:
            assert await conn.scalar(text("SELECT id FROM organizations")) == org_id

        # Following the message: emptied, the migration converts.
        async with engine.begin() as conn:
            await conn.execute(text("SET LOCAL bridge.capture = 'off'"))
            await conn.execute(
                text("TRUNCATE users, organizations, sync_conflicts, sync_stale_events")
            )
        await migrate(database_url)
        assert await _revision(engine) == "0013_outbox_body"  # head
        assert (await _columns(engine))[("organizations", "id")][0] == "bigint"
    finally:
        await engine.dispose()


async def test_rows_in_the_bookkeeping_alone_are_refused_too(database_url: str) -> None:
    await migrate(database_url, "0011_sync_records")
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO sync_stale_events (event_id, resource_type, resource_id, "
                    "incoming_updated_at, incoming_origin, local_updated_at, local_origin) "
                    "VALUES (:e, 'user', :r, now(), 'system_b', now(), 'system_a')"
                ),
                {"e": uuid.uuid4(), "r": uuid.uuid4()},
            )
        with pytest.raises(Exception, match=r"sync_stale_events: 1"):
            await migrate(database_url)
        assert await _revision(engine) == "0011_sync_records"
    finally:
        await engine.dispose()
