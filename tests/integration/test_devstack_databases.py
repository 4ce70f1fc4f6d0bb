"""The databases ``make up`` uses, against a real PostgreSQL server.

Its own databases by default (created if missing), never one that holds tables the
services and the bridge do not define; DATABASE_URL_A/_B when given (a missing or
unreachable one is a one-line error, foreign tables are said out loud).  Each test
uses its own database names, never the real defaults of this machine.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest

from bridge.testing import PostgresServer, replace_database, to_plain_url
from services.devstack import DevstackError
from services.devstack_db import given_database, own_database
from services.shared.db import migrate


@pytest.fixture
async def names(postgres: PostgresServer) -> AsyncIterator[Callable[[], str]]:
    """Fresh database names for one test; every database made with them is dropped."""
    made: list[str] = []

    def name() -> str:
        made.append(f"jsb_test_{uuid.uuid4().hex[:10]}")
        return made[-1]

    yield name
    conn = await asyncpg.connect(postgres.admin_url)
    try:
        for db in made:
            await conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    finally:
        await conn.close()


async def execute(url: str, sql: str) -> None:
    conn = await asyncpg.connect(to_plain_url(url))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def tables(url: str) -> set[str]:
    conn = await asyncpg.connect(to_plain_url(url))
    try:
        rows = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )
    finally:
        await conn.close()
    return {row["table_name"] for row in rows}


async def test_own_database_is_created_when_missing_and_reused_when_ours(
    postgres: PostgresServer, names: Callable[[], str]
) -> None:
    name = names()
    url = await own_database(postgres, name)
    assert url.endswith(f"/{name}") and url.startswith("postgresql+asyncpg://")
    await migrate(url)
    assert await own_database(postgres, name) == url  # ours: reused


async def test_own_database_with_a_foreign_table_is_refused_untouched(
    postgres: PostgresServer, names: Callable[[], str]
) -> None:
    name = names()
    url = await postgres.create_database(name)
    await execute(url, "CREATE TABLE invoices (id int); CREATE SCHEMA billing; "
                       "CREATE TABLE billing.users (id int)")  # fmt: skip
    with pytest.raises(DevstackError) as exc:
        await own_database(postgres, name)
    message = str(exc.value)
    assert "\n" not in message
    assert name in message and "invoices" in message and "billing.users" in message
    assert "DATABASE_URL_A" in message and "DROP DATABASE" in message
    assert await tables(url) == {"invoices"}  # nothing migrated into it


async def test_own_database_of_another_alembic_project_is_refused(
    postgres: PostgresServer, names: Callable[[], str]
) -> None:
    name = names()
    url = await postgres.create_database(name)
    await execute(url, "CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY);"
                       "INSERT INTO alembic_version VALUES ('f00dcafe1234')")  # fmt: skip
    with pytest.raises(DevstackError, match="f00dcafe1234"):
        await own_database(postgres, name)


async def test_given_database_that_does_not_exist_is_one_line(
    postgres: PostgresServer, names: Callable[[], str]
) -> None:
    missing = names()
    url = replace_database(postgres.admin_url, missing)
    with pytest.raises(DevstackError) as exc:
        await given_database(url, variable="DATABASE_URL_A")
    message = str(exc.value)
    assert "\n" not in message and "Traceback" not in message
    assert "DATABASE_URL_A" in message and missing in message and "does not exist" in message


async def test_given_database_unreachable_is_one_line_without_the_password() -> None:
    url = "postgresql://someone:s3cret@127.0.0.1:1/app"
    with pytest.raises(DevstackError) as exc:
        await given_database(url, variable="DATABASE_URL_B")
    message = str(exc.value)
    assert "\n" not in message and "DATABASE_URL_B" in message and "s3cret" not in message


async def test_given_database_with_foreign_tables_is_used_but_said(
    postgres: PostgresServer, names: Callable[[], str]
) -> None:
    url = await postgres.create_database(names())
    await execute(url, "CREATE TABLE invoices (id int)")
    async_url, foreign = await given_database(url, variable="DATABASE_URL_A")
    assert async_url.startswith("postgresql+asyncpg://") and foreign == ["invoices"]
