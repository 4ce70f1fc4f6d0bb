"""A database restored from an older backup (pg_dump, then pg_restore into a fresh
database) never re-issues the ids it gave out after the backup: the clock moved on,
and where ids ran ahead of the clock, bridge_id_advance_past() is the procedure."""

from __future__ import annotations

import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import asyncpg
from ids_support import connect, install_with_system
from sqlalchemy.ext.asyncio import create_async_engine

from bridge import ids
from bridge.testing import PostgresServer
from bridge.testing.servers import to_plain_url


async def _issue(conn: asyncpg.Connection, count: int) -> list[int]:
    rows = await conn.fetch("SELECT bridge_next_id() AS id FROM generate_series(1, $1)", count)
    return [row["id"] for row in rows]


def _dump(url: str, path: Path) -> None:
    subprocess.run(
        ["pg_dump", "--format=custom", f"--file={path}", to_plain_url(url)],
        check=True,
        capture_output=True,
        timeout=120,
    )


async def _restore(postgres: PostgresServer, path: Path) -> str:
    url = await postgres.create_database()
    subprocess.run(
        ["pg_restore", "--no-owner", f"--dbname={to_plain_url(url)}", str(path)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return url


async def _state(url: str) -> ids.GeneratorState:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return await ids.verify(conn)
    finally:
        await engine.dispose()


async def test_a_restored_database_continues_after_the_ids_it_gave_out_since_the_backup(
    database_url: str, postgres: PostgresServer, tmp_path: Path
) -> None:
    await install_with_system(database_url, 1)
    live = await connect(database_url)
    try:
        before = await _issue(live, 100)
        _dump(database_url, tmp_path / "backup.dump")
        # Given out after the backup: the other side holds them now.
        held = await _issue(live, 500)
    finally:
        await live.close()

    restored_url = await _restore(postgres, tmp_path / "backup.dump")
    try:
        state = await _state(restored_url)
        assert state.last_id == max(before)  # the state came back from the backup
        restored = await connect(restored_url)
        try:
            after = await _issue(restored, 500)
        finally:
            await restored.close()
        # No operator step: the clock moved on, so the generator did too (500 ids ran at
        # most 8 ms ahead of the clock; a dump and a restore take longer than that).
        assert min(after) > max(held)
        assert not set(after) & set(held)
    finally:
        await postgres.drop_database(restored_url)


async def test_ids_ahead_of_the_clock_need_advance_past_after_a_restore(
    database_url: str, postgres: PostgresServer, tmp_path: Path
) -> None:
    await install_with_system(database_url, 1)
    live = await connect(database_url)
    try:
        await live.execute("UPDATE bridge_id_settings SET max_lead_ms = 3600000")
        await _issue(live, 10)
        _dump(database_url, tmp_path / "backup.dump")
        # After the backup the generator ran 20 minutes ahead of the clock (a clock
        # that went back, or bursts): ids the restored clock would reach again.
        now: datetime = await live.fetchval("SELECT clock_timestamp()")
        await live.fetchval(
            "SELECT bridge_id_advance_past($1)", ids.compose(now + timedelta(minutes=20), 0, 1)
        )
        held = await _issue(live, 50)
    finally:
        await live.close()

    restored_url = await _restore(postgres, tmp_path / "backup.dump")
    try:
        state = await _state(restored_url)
        assert state.last_id is not None and state.last_id < min(held)
        assert state.lead_ms is not None and state.lead_ms < 0  # the state trails the clock
        # The restore procedure: before taking writes, advance past what the others hold.
        engine = create_async_engine(restored_url)
        try:
            async with engine.begin() as conn:
                await ids.advance_past(conn, max(held))
                after = [await ids.next_id(conn) for _ in range(50)]
        finally:
            await engine.dispose()
        assert min(after) > max(held)
        assert ids.decode(min(after)).system == 1
    finally:
        await postgres.drop_database(restored_url)
