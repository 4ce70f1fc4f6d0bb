"""Migration 0010_bridge_ids: installs the same generator as the metadata, leaves the
system number unset, and its downgrade refuses while a column still takes its ids."""

from __future__ import annotations

import asyncpg
import pytest
from alembic import command
from ids_support import connect
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from bridge import ids
from bridge.errors import IdentityError
from services.shared.db import alembic_config, migrate


async def _downgrade(url: str, revision: str) -> None:
    def run(connection: Connection) -> None:
        config = alembic_config(url)
        config.attributes["connection"] = connection
        command.downgrade(config, revision)

    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(run)
    finally:
        await engine.dispose()


async def test_the_migration_installs_the_generator_with_the_system_number_unset(
    database_url: str,
) -> None:
    await migrate(database_url)
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            with pytest.raises(IdentityError) as refused:
                await ids.verify(conn)  # same functions as bridge.ids.install (scheme marker)
            assert refused.value.code == "system_unset"
        async with engine.begin() as conn:
            await ids.set_system_number(conn, 7)
            assert (await ids.verify(conn)).system_number == 7
            assert ids.decode(await ids.next_id(conn)).system == 7
    finally:
        await engine.dispose()


async def test_the_downgrade_refuses_while_a_column_takes_its_ids(database_url: str) -> None:
    await migrate(database_url)
    raw: asyncpg.Connection = await connect(database_url)
    try:
        await raw.execute("CREATE TABLE things (id bigint PRIMARY KEY DEFAULT bridge_next_id())")
        with pytest.raises(DBAPIError, match="other objects depend on it"):
            await _downgrade(database_url, "0006_console_audit")
        await raw.execute("DROP TABLE things")
        await _downgrade(database_url, "0006_console_audit")
        gone = await raw.fetchval(
            "SELECT count(*) FROM pg_proc "
            "WHERE proname LIKE 'bridge_id%' OR proname = 'bridge_next_id'"
        )
        assert gone == 0
        assert await raw.fetchval("SELECT to_regclass('bridge_id_settings')") is None
        assert await raw.fetchval("SELECT to_regclass('bridge_id_tick')") is None
    finally:
        await raw.close()
    await migrate(database_url)  # and up again
