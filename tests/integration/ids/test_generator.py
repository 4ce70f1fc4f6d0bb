"""bridge_next_id() on a real PostgreSQL: every insert path gets an id, ids increase,
a full millisecond borrows the next one, a clock far behind is refused without
re-issuing, and a cancelled statement never leaves the generator locked."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
from datetime import datetime, timedelta

import asyncpg
import pytest
from sqlalchemy import BigInteger, Column, MetaData, String, Table, insert, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped

from bridge import ids
from bridge.errors import IdentityError
from bridge.ids.ddl import ID_LOCK_KEY
from bridge.testing.servers import to_plain_url

widgets_metadata = MetaData()
widgets = Table(
    "widgets",
    widgets_metadata,
    Column("id", BigInteger, primary_key=True, server_default=text("bridge_next_id()")),
    Column("name", String(50), nullable=False),
)


class _Base(DeclarativeBase):
    metadata = widgets_metadata


class Widget(_Base):
    __table__ = widgets
    id: Mapped[int]
    name: Mapped[str]


async def _db_now(raw: asyncpg.Connection) -> datetime:
    now: datetime = await raw.fetchval("SELECT clock_timestamp()")
    return now


async def _advisory_locks(raw: asyncpg.Connection) -> list[asyncpg.Record]:
    return list(
        await raw.fetch(
            "SELECT pid, granted FROM pg_locks WHERE locktype = 'advisory' "
            "AND classid = $1 AND objid = $2 AND objsubid = 1",
            ID_LOCK_KEY >> 32,
            ID_LOCK_KEY & 0xFFFFFFFF,
        )
    )


async def test_every_insert_path_gets_an_id_from_the_column_default(
    ids_engine: AsyncEngine, ids_url: str
) -> None:
    async with ids_engine.begin() as conn:
        await conn.run_sync(widgets_metadata.create_all)
    issued: list[int] = []
    async with ids_engine.begin() as conn:
        issued.append(
            (
                await conn.execute(insert(widgets).values(name="core").returning(widgets.c.id))
            ).scalar_one()
        )
        issued.append(
            (
                await conn.execute(text("INSERT INTO widgets (name) VALUES ('raw') RETURNING id"))
            ).scalar_one()
        )
    async with AsyncSession(ids_engine) as session, session.begin():
        widget = Widget(name="orm")
        session.add(widget)
        await session.flush()
        issued.append(widget.id)
    psql = subprocess.run(
        [
            "psql",
            to_plain_url(ids_url),
            "-AtqX",
            "-c",
            "INSERT INTO widgets (name) VALUES ('psql') RETURNING id",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    issued.append(int(psql.stdout.split()[0]))

    assert issued == sorted(set(issued))  # distinct, increasing in the order of the inserts
    assert [ids.decode(i).system for i in issued] == [1, 1, 1, 1]
    async with ids_engine.connect() as conn:
        stored = (await conn.execute(text("SELECT id FROM widgets ORDER BY id"))).scalars().all()
    assert list(stored) == issued


async def test_ids_increase_strictly_and_name_when_they_were_issued(
    raw: asyncpg.Connection,
) -> None:
    count = 3000
    before = await _db_now(raw)
    issued = [
        r[0] for r in await raw.fetch(f"SELECT bridge_next_id() FROM generate_series(1, {count})")
    ]
    after = await _db_now(raw)
    assert all(a < b for a, b in itertools.pairwise(issued))
    first, last = ids.decode(issued[0]), ids.decode(issued[-1])
    assert {ids.decode(i).system for i in issued} == {1}
    assert first.time >= before.replace(microsecond=before.microsecond // 1000 * 1000)
    # A burst borrows at most one millisecond per 64 ids beyond the clock.
    assert last.time <= after + timedelta(milliseconds=count // ids.SEQUENCES_PER_MS + 1)
    # The SQL decoder agrees with the Python one.
    for value in (issued[0], issued[-1], ids.MAX_ID, 0):
        row = await raw.fetchrow("SELECT * FROM bridge_id_provenance($1)", value)
        assert row is not None
        expected = ids.decode(value)
        assert (row["issued_at"], row["sequence"], row["system"]) == (
            expected.time,
            expected.sequence,
            expected.system,
        )


async def test_a_rolled_back_id_is_never_issued_again(raw: asyncpg.Connection) -> None:
    transaction = raw.transaction()
    await transaction.start()
    rolled_back = await raw.fetchval("SELECT bridge_next_id()")
    await transaction.rollback()
    assert await raw.fetchval("SELECT bridge_next_id()") > rolled_back


async def test_a_full_millisecond_borrows_the_next_one(
    ids_engine: AsyncEngine, raw: asyncpg.Connection
) -> None:
    await raw.execute("UPDATE bridge_id_settings SET max_lead_ms = 3600000")
    # The generator sits at sequence 61 of a millisecond ten minutes ahead of the clock
    # (a burst, or a clock that went back): no real time passes in the next ids.
    at = (await _db_now(raw)) + timedelta(minutes=10)
    async with ids_engine.begin() as conn:
        await ids.advance_past(conn, ids.compose(at, 61, 1))
    issued = [r[0] for r in await raw.fetch("SELECT bridge_next_id() FROM generate_series(1, 4)")]
    millisecond = ids.decode(ids.compose(at, 0, 1)).millisecond
    assert [(ids.decode(i).millisecond - millisecond, ids.decode(i).sequence) for i in issued] == [
        (0, 62),
        (0, 63),
        (1, 0),
        (1, 1),
    ]


async def test_a_clock_behind_the_last_id_borrows_within_the_lead_and_is_refused_beyond(
    ids_engine: AsyncEngine, raw: asyncpg.Connection
) -> None:
    await raw.execute("UPDATE bridge_id_settings SET max_lead_ms = 3600000")
    ahead = (await _db_now(raw)) + timedelta(minutes=30)
    last_known = ids.compose(ahead, 0, 1)
    async with ids_engine.begin() as conn:
        await ids.advance_past(conn, last_known)
    # Within max_lead_ms: the next id continues after the last one, in the "future".
    borrowed = await raw.fetchval("SELECT bridge_next_id()")
    assert borrowed == last_known + ids.MAX_SYSTEM + 1  # the next tick, same system

    # The clock is now "too far" behind: refused with its SQLSTATE, nothing issued.
    await raw.execute("UPDATE bridge_id_settings SET max_lead_ms = 1000")
    with pytest.raises(asyncpg.PostgresError) as refused:
        await raw.fetchval("SELECT bridge_next_id()")
    assert refused.value.sqlstate == "BRI04"
    assert "behind the last issued id" in str(refused.value)
    async with ids_engine.connect() as conn:
        with pytest.raises(IdentityError) as mapped:
            await ids.next_id(conn)
        assert mapped.value.code == "clock_behind"
    async with ids_engine.connect() as conn:
        state = await ids.verify(conn)
    assert state.last_id == borrowed  # refusals moved nothing
    assert state.lead_ms is not None and state.lead_ms > 1000
    assert await _advisory_locks(raw) == []  # and left no lock behind

    await raw.execute("UPDATE bridge_id_settings SET max_lead_ms = 3600000")
    assert await raw.fetchval("SELECT bridge_next_id()") == borrowed + ids.MAX_SYSTEM + 1


async def test_a_statement_cancelled_inside_the_generator_releases_its_lock(
    ids_url: str, raw: asyncpg.Connection
) -> None:
    victim = await asyncpg.connect(to_plain_url(ids_url))
    try:
        victim_pid = victim.get_server_pid()
        # Hold the state sequence so the victim stops *inside* its critical section,
        # after it took the generator's lock.
        blocker = raw.transaction()
        await blocker.start()
        await raw.execute(f"ALTER SEQUENCE bridge_id_tick MAXVALUE {ids.MAX_ID >> 6}")
        call = asyncio.ensure_future(victim.fetchval("SELECT bridge_next_id()"))
        while not [
            lock
            for lock in await _advisory_locks(raw)
            if lock["pid"] == victim_pid and lock["granted"]
        ]:
            await asyncio.sleep(0.01)
        assert await raw.fetchval("SELECT pg_cancel_backend($1)", victim_pid)
        with pytest.raises(asyncpg.QueryCanceledError):
            await call
        await blocker.rollback()
        assert await _advisory_locks(raw) == []
        # Both sessions go on issuing ids.
        first = await victim.fetchval("SELECT bridge_next_id()")
        assert await raw.fetchval("SELECT bridge_next_id()") > first
    finally:
        await victim.close()


async def test_the_end_of_the_scheme_is_refused(
    ids_engine: AsyncEngine, raw: asyncpg.Connection
) -> None:
    await raw.execute(f"SELECT setval('bridge_id_tick', {ids.MAX_ID >> 6})")
    with pytest.raises(asyncpg.PostgresError) as refused:
        await raw.fetchval("SELECT bridge_next_id()")
    assert refused.value.sqlstate == "BRI05"
    async with ids_engine.connect() as conn:
        with pytest.raises(IdentityError) as mapped:
            await ids.next_id(conn)
    assert mapped.value.code == "exhausted"
