"""The generator's settings and its operator functions under hostile input: a system
number unset, out of range or forged past the CHECK, the settings row deleted or
doubled, ids that are not ids, an id from the far future, a foreign installation."""

from __future__ import annotations

import asyncpg
import pytest
from ids_support import SERVER_SETTINGS
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bridge import ids
from bridge.errors import IdentityError


async def _refusal(raw: asyncpg.Connection, sql: str, *args: object) -> asyncpg.PostgresError:
    with pytest.raises(asyncpg.PostgresError) as refused:
        await raw.fetchval(sql, *args)
    return refused.value


async def _code(engine: AsyncEngine, *, verify: bool = False) -> str:
    async with engine.connect() as conn:
        with pytest.raises(IdentityError) as refused:
            if verify:
                await ids.verify(conn)
            else:
                await ids.next_id(conn)
    return refused.value.code


async def test_install_is_idempotent_and_the_system_number_starts_unset(database_url: str) -> None:
    engine = create_async_engine(database_url, connect_args={"server_settings": SERVER_SETTINGS})
    try:
        async with engine.connect() as conn:
            with pytest.raises(IdentityError) as refused:
                await ids.verify(conn)
        assert refused.value.code == "not_installed"
        assert "bridge_next_id" in str(refused.value)
        for _ in range(2):
            async with engine.begin() as conn:
                await ids.install(conn)
        assert await _code(engine) == "system_unset"
        assert await _code(engine, verify=True) == "system_unset"
        async with engine.begin() as conn:
            await ids.set_system_number(conn, 63)
        async with engine.begin() as conn:
            state = await ids.verify(conn)
            assert (state.system_number, state.max_lead_ms, state.last_id) == (63, 10000, None)
            issued = await ids.next_id(conn)
            await ids.install(conn)  # reinstalling keeps the state and the settings
            assert (await ids.verify(conn)).last_id == issued
            assert await ids.next_id(conn) > issued
        assert ids.decode(issued).system == 63
    finally:
        await engine.dispose()


@pytest.mark.parametrize("value", [64, -1, 2**31 - 1, -(2**31)])
async def test_an_out_of_range_system_number_is_refused_where_it_is_written(
    ids_engine: AsyncEngine, value: int
) -> None:
    async with ids_engine.begin() as conn:
        with pytest.raises(IntegrityError, match="ck_bridge_id_settings_system_number"):
            await conn.execute(
                text("UPDATE bridge_id_settings SET system_number = :v"), {"v": value}
            )
    async with ids_engine.begin() as conn:
        with pytest.raises(IdentityError) as refused:
            await ids.set_system_number(conn, value)
        assert refused.value.code == "system_out_of_range"
        assert (await ids.verify(conn)).system_number == 1


@pytest.mark.parametrize("value", [64, 1000, -1, 2**31 - 1])
async def test_a_forged_system_number_past_the_check_is_refused_by_the_function(
    ids_engine: AsyncEngine, raw: asyncpg.Connection, value: int
) -> None:
    await raw.execute(
        "ALTER TABLE bridge_id_settings DROP CONSTRAINT ck_bridge_id_settings_system_number"
    )
    await raw.execute("UPDATE bridge_id_settings SET system_number = $1", value)
    refused = await _refusal(raw, "SELECT bridge_next_id()")
    assert refused.sqlstate == "BRI03"
    assert str(value) in str(refused)
    assert await _code(ids_engine) == "system_out_of_range"
    assert await _code(ids_engine, verify=True) == "system_out_of_range"


async def test_an_unset_or_deleted_setting_is_refused(
    ids_engine: AsyncEngine, raw: asyncpg.Connection
) -> None:
    await raw.execute("UPDATE bridge_id_settings SET system_number = NULL")
    assert (await _refusal(raw, "SELECT bridge_next_id()")).sqlstate == "BRI02"
    assert await _code(ids_engine) == "system_unset"

    await raw.execute("DELETE FROM bridge_id_settings")
    refused = await _refusal(raw, "SELECT bridge_next_id()")
    assert refused.sqlstate == "BRI01" and "has no row" in str(refused)
    assert await _code(ids_engine) == "settings_missing"
    assert await _code(ids_engine, verify=True) == "settings_missing"
    assert (await _refusal(raw, "SELECT bridge_id_advance_past(1)")).sqlstate == "BRI01"

    async with ids_engine.begin() as conn:  # set_system_number puts the row back
        await ids.set_system_number(conn, 2)
    assert ids.decode(await raw.fetchval("SELECT bridge_next_id()")).system == 2


async def test_the_settings_hold_one_row(raw: asyncpg.Connection) -> None:
    with pytest.raises(asyncpg.UniqueViolationError):
        await raw.execute("INSERT INTO bridge_id_settings (system_number) VALUES (2)")
    with pytest.raises(asyncpg.CheckViolationError, match="singleton"):
        await raw.execute(
            "INSERT INTO bridge_id_settings (singleton, system_number) VALUES (false, 2)"
        )
    with pytest.raises(asyncpg.CheckViolationError, match="max_lead_ms"):
        await raw.execute("UPDATE bridge_id_settings SET max_lead_ms = -1")


@pytest.mark.parametrize("value", [-1, ids.MAX_ID + 1, 2**63 - 1, -(2**63)])
async def test_advance_past_refuses_what_is_not_an_id(
    ids_engine: AsyncEngine, raw: asyncpg.Connection, value: int
) -> None:
    assert (await _refusal(raw, "SELECT bridge_id_advance_past($1)", value)).sqlstate == "BRI06"
    async with ids_engine.connect() as conn:
        with pytest.raises(IdentityError) as refused:
            await ids.advance_past(conn, value)
    assert refused.value.code == "out_of_range"


async def test_advance_past_refuses_an_id_from_the_far_future_and_never_moves_back(
    ids_engine: AsyncEngine, raw: asyncpg.Connection
) -> None:
    issued = await raw.fetchval("SELECT bridge_next_id()")
    # 2**53 - 1 would stop the generator until 2094: refused, nothing moved.
    refused = await _refusal(raw, "SELECT bridge_id_advance_past($1)", ids.MAX_ID)
    assert refused.sqlstate == "BRI04" and "ahead of this database's clock" in str(refused)
    async with ids_engine.connect() as conn:
        with pytest.raises(IdentityError) as mapped:
            await ids.advance_past(conn, ids.MAX_ID)
        assert mapped.value.code == "clock_behind"
    async with ids_engine.begin() as conn:
        assert (await ids.verify(conn)).last_id == issued
        # An older id changes nothing either.
        assert await ids.advance_past(conn, 42) == issued >> 6
        assert (await ids.verify(conn)).last_id == issued


async def test_a_generator_of_another_scheme_is_reported(
    ids_engine: AsyncEngine, raw: asyncpg.Connection
) -> None:
    await raw.execute(
        "CREATE OR REPLACE FUNCTION bridge_next_id() RETURNS bigint "
        "LANGUAGE sql AS $$ SELECT nextval('bridge_id_tick') $$"
    )
    assert await _code(ids_engine, verify=True) == "scheme_mismatch"
    async with ids_engine.begin() as conn:
        await ids.install(conn)
        assert (await ids.verify(conn)).system_number == 1
