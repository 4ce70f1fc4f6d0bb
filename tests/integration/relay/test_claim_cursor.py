"""The claim cursor: a drain's claims resume after the last full claim, never at the cost
of a row behind it (it holds its record back and the next scan from the start takes
it), and the outbox's fill factor keeps the lease update HOT."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bridge.outbox._cursor import ClaimCursor
from bridge.outbox._store import OutboxStore
from bridge.testing import PostgresServer
from services.shared.db import migrate

_INSERT = text(
    """
    INSERT INTO bridge_outbox (event_id, subject, event_type, resource_type, resource_id,
                               body, next_attempt_at)
    VALUES (:event_id, 'sync.a.b', 'widget.updated', 'widget', :rid, CAST(:payload AS jsonb),
            now() - make_interval(secs => :age))
    RETURNING id
    """
)


async def add(engine: AsyncEngine, rid: str, *, age: float = 0.0, pad: int = 10) -> int:
    """One pending row of record ``rid``, due ``age`` seconds ago (a late commit: its
    transaction began before the rows the cursor already passed)."""
    payload = json.dumps({"id": rid, "notes": "x" * pad})
    async with engine.begin() as conn:
        result = await conn.execute(
            _INSERT, {"event_id": str(uuid.uuid4()), "rid": rid, "payload": payload, "age": age}
        )
        return int(result.scalar_one())


def store_for(engine: AsyncEngine, *, rescan_interval: float = 3600.0) -> OutboxStore:
    store = OutboxStore(engine, owner=f"t-{uuid.uuid4().hex[:8]}", lease=30.0, max_attempts=3)
    store.cursor = ClaimCursor(rescan_interval=rescan_interval)
    return store


async def ids(store: OutboxStore, limit: int) -> list[int]:
    return [row.id for row in await store.claim(limit)]


async def test_a_full_claim_resumes_after_its_last_row_a_short_one_rescans(
    engine: AsyncEngine,
) -> None:
    first = [await add(engine, f"r{i}") for i in range(6)]
    store = store_for(engine)
    assert await ids(store, 3) == first[:3]
    assert store.cursor.position is not None and store.cursor.position[1] == first[2]
    late = await add(engine, "late", age=3600)  # due before every row claimed so far
    assert await ids(store, 3) == first[3:]  # resumed after the cursor: not seen yet
    # nothing after the cursor any more: an empty claim, and the next one scans from
    # the start (an empty claim from the cursor does not: its records are in flight)
    assert await ids(store, 3) == []
    assert store.cursor.position is None
    assert await ids(store, 3) == [late]
    assert await ids(store, 3) == []


async def test_a_row_behind_the_cursor_holds_its_record_back_until_the_rescan(
    engine: AsyncEngine,
) -> None:
    head = [await add(engine, f"h{i}") for i in range(2)]
    store = store_for(engine)
    assert await ids(store, 2) == head
    earlier = await add(engine, "r", age=3600)  # behind the cursor
    later = await add(engine, "r")  # after it, same record
    others = [await add(engine, f"o{i}") for i in range(2)]
    # The scan after the cursor sees `later` first but must not take it without
    # `earlier`: the other records' rows go; short, so the claim goes on from the
    # start and takes `earlier` — `later` waits until `earlier` is settled.
    assert await ids(store, 3) == [earlier, *others]
    assert store.cursor.position is None
    assert await ids(store, 3) == []
    await store.settle([(earlier, 1)], [], [])
    assert await ids(store, 3) == [later]


async def test_rows_released_by_this_relay_are_rescanned_at_once(engine: AsyncEngine) -> None:
    rows = [await add(engine, f"r{i}") for i in range(4)]
    store = store_for(engine)
    assert await ids(store, 2) == rows[:2]
    assert store.cursor.position is not None
    assert await store.release(rows[:1]) == 1
    assert store.cursor.position is None
    assert await ids(store, 2) == [rows[0], rows[2]]


async def test_the_rescan_interval_bounds_the_cursor() -> None:
    cursor = ClaimCursor(rescan_interval=0.0)
    assert cursor.after() is None
    cursor.advance([(_at(1), 5), (_at(2), 3)], True)
    assert cursor.position == (_at(2), 3)
    assert cursor.after() is None  # past the interval: from the start again
    kept = ClaimCursor(rescan_interval=3600.0)
    kept.advance([(_at(1), 5), (_at(2), 3)], True)
    assert kept.after() == (_at(2), 3)
    kept.advance([(_at(3), 9)], False)  # short
    assert kept.after() is None
    kept.advance([], True)
    assert kept.after() is None


def _at(second: int) -> datetime:
    return datetime(2026, 1, 1, 0, 0, second, tzinfo=UTC)


async def _outbox_layout(engine: AsyncEngine) -> tuple[list[str], list[str], list[str]]:
    """(reloptions, index definitions, columns) of bridge_outbox."""
    async with engine.connect() as conn:
        options = await conn.scalar(
            text("SELECT reloptions FROM pg_class WHERE relname = 'bridge_outbox'")
        )
        indexes = await conn.scalars(
            text(
                "SELECT pg_get_indexdef(indexrelid) FROM pg_index "
                "WHERE indrelid = 'bridge_outbox'::regclass ORDER BY 1"
            )
        )
        columns = await conn.scalars(
            text(
                "SELECT attname FROM pg_attribute WHERE attrelid = 'bridge_outbox'::regclass "
                "AND attnum > 0 AND NOT attisdropped ORDER BY attname"
            )
        )
        return list(options or []), list(indexes), list(columns)


async def test_both_schema_paths_give_the_outbox_one_layout(
    engine: AsyncEngine, postgres: PostgresServer
) -> None:
    """create_all and the migrations (0009's fill factor, reset by 0013; the hashed
    record index, an expression Alembic's comparison cannot see) agree exactly."""
    options, indexes, columns = await _outbox_layout(engine)  # create_all
    assert options == []  # the default fill factor: rows pack pages (outbox bytes per row)
    assert "body" in columns and "payload" not in columns
    (record,) = [d for d in indexes if "ix_bridge_outbox_record_pending" in d]
    assert "hashtextextended" in record and record.endswith(
        "WHERE ((status)::text = 'pending'::text)"
    )
    assert not [d for d in indexes if "resource_pending" in d]
    url = await postgres.create_database()
    migrated = create_async_engine(url)
    try:
        await migrate(url)
        assert await _outbox_layout(migrated) == (options, indexes, columns)
    finally:
        await migrated.dispose()
        await postgres.drop_database(url)
