"""bridge.sync.lww beyond ``id``/``updated_at``/``deleted_at``: a composite text+int
primary key, an integer version without origin, hard deletes without a tombstone, a
composite natural key, and the default reporting into the bridge's tables."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest
from sqlalchemy import Integer, MetaData, String, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bridge import schema
from bridge.envelope import Envelope
from bridge.errors import ConfigError, Reject, Retry
from bridge.outbox.capture import Synced
from bridge.sync.lww import Collision, LastWriterWins, SyncedTable


class Base(DeclarativeBase):
    metadata = MetaData()


class Seat(Synced, Base):
    """Composite key (hall, number), an integer version, no tombstone: deletes are hard."""

    __tablename__ = "seats"
    __bridge_resource__ = "seat"
    __bridge_version__: ClassVar[tuple[str, ...]] = ("revision",)
    __bridge_natural_keys__: ClassVar[tuple[Any, ...]] = (("hall", "label"),)

    hall: Mapped[str] = mapped_column(String(20), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    label: Mapped[str] = mapped_column(String(20))
    revision: Mapped[int] = mapped_column(Integer)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(database_url)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
        await conn.run_sync(schema.metadata.create_all)
    yield engine
    await engine.dispose()


def seat(hall: str, number: int, label: str, revision: int, action: str = "updated") -> Envelope:
    return Envelope(
        event_type=f"seat.{action}",
        producer="a",
        resource_type="seat",
        resource_id=f'["{hall}", {number}]',  # the rule: jsonb_build_array(...)::text
        payload={"hall": hall, "number": number, "label": label, "revision": revision},
    )


async def run(engine: AsyncEngine, lww: LastWriterWins, *envelopes: Envelope) -> None:
    async with AsyncSession(engine) as session, session.begin():
        await lww.handle_batch(session, envelopes)


async def seats(engine: AsyncEngine) -> list[tuple[str, int, str, int]]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT * FROM seats ORDER BY hall, number"))
        return [tuple(row) for row in rows]  # type: ignore[misc]


async def test_composite_key_integer_version_and_hard_delete(engine: AsyncEngine) -> None:
    lww = LastWriterWins.for_model(Seat)
    await run(
        engine, lww, seat("east", 1, "A1", 1), seat("east", 2, "A2", 1), seat("east", 1, "A1*", 2)
    )
    assert await seats(engine) == [("east", 1, "A1*", 2), ("east", 2, "A2", 1)]

    await run(engine, lww, seat("east", 1, "old", 1))  # stale: reported in the bridge's table
    async with engine.connect() as conn:
        stale = (await conn.execute(select(schema.sync_stale_events))).mappings().one()
    assert stale["resource_id"] == '["east", 1]'
    assert (stale["incoming_version"], stale["local_version"]) == ({"revision": 1}, {"revision": 2})

    # same revision, other content, no origin column: nobody may repair
    await run(engine, lww, seat("east", 1, "other", 2))
    assert (await seats(engine))[0] == ("east", 1, "A1*", 2)

    await run(engine, lww, seat("east", 2, "A2", 1, action="deleted"))  # the stored version
    assert await seats(engine) == [("east", 1, "A1*", 2)]
    await run(engine, lww, seat("east", 1, "A1*", 1, action="deleted"))  # older: stale
    assert await seats(engine) == [("east", 1, "A1*", 2)]
    # a delete then a re-create in one run; a delete of a record never seen is nothing
    await run(
        engine, lww, seat("east", 1, "A1*", 2, "deleted"), seat("east", 1, "B", 3),
        seat("west", 9, "Z", 1, "deleted"),
    )  # fmt: skip
    assert await seats(engine) == [("east", 1, "B", 3)]


async def test_a_composite_natural_key_conflict_is_recorded_and_dead_lettered(
    engine: AsyncEngine,
) -> None:
    lww = LastWriterWins.for_model(Seat)
    await run(engine, lww, seat("east", 1, "A1", 1))
    with pytest.raises(Collision):  # in a run: each event is re-run alone
        await run(engine, lww, seat("east", 3, "A3", 1), seat("east", 2, "A1", 1))
    with pytest.raises(Collision):  # two of the run hold one key
        await run(engine, lww, seat("west", 1, "Q", 1), seat("west", 2, "Q", 1))
    with pytest.raises(Reject) as refused:
        await run(engine, lww, seat("east", 2, "A1", 1))
    assert refused.value.reason == "conflict" and not isinstance(refused.value, Retry)
    async with engine.connect() as conn:
        conflict = (await conn.execute(select(schema.sync_conflicts))).mappings().one()
    assert (conflict["key_name"], conflict["key_value"]) == ("hall,label", '["east", "A1"]')
    assert (conflict["local_id"], conflict["incoming_id"]) == ('["east", 1]', '["east", 2]')
    assert conflict["local_values"] == {"hall": "east", "number": 1, "label": "A1", "revision": 1}
    # the same label in another hall is no collision
    await run(engine, lww, seat("west", 1, "A1", 1))
    assert len(await seats(engine)) == 2


async def test_a_payload_that_is_not_a_row_is_an_invalid_payload(engine: AsyncEngine) -> None:
    lww = LastWriterWins.for_model(Seat)
    bad = seat("east", 1, "A1", 1)
    for payload, resource_id in [
        ({**bad.payload, "number": "1"}, '["east", 1]'),
        ({**bad.payload, "revision": None}, '["east", 1]'),
        (bad.payload, '["east", 2]'),  # the key differs from resource_id
    ]:
        envelope = Envelope(
            event_type="seat.updated", producer="a", resource_type="seat",
            resource_id=resource_id, payload=payload,
        )  # fmt: skip
        with pytest.raises(Reject) as refused:
            await run(engine, lww, envelope)
        assert refused.value.reason == "invalid_payload"
    assert await seats(engine) == []


def test_a_model_the_declarations_do_not_fit_is_refused_by_name() -> None:
    class Odd(Synced, Base):
        __tablename__ = "odd"
        __bridge_resource__ = "odd"
        __bridge_version__ = ("stamp", "origin")
        __bridge_tombstone__ = "gone"

        key: Mapped[str] = mapped_column(String(5), primary_key=True)
        stamp: Mapped[str] = mapped_column(String(5))
        origin: Mapped[str] = mapped_column(String(5))

    with pytest.raises(ConfigError, match="Odd has no column gone"):
        SyncedTable(Odd)
    Odd.__bridge_tombstone__ = None
    with pytest.raises(ConfigError, match=r"Odd\.stamp"):
        SyncedTable(Odd)
