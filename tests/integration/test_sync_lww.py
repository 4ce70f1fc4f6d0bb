"""bridge.sync.lww on a table of its own (no natural key): the library's one
last-writer-wins applier, as an application other than the services would use it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import DateTime, MetaData, String, select
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bridge.envelope import Envelope
from bridge.errors import Reject
from bridge.outbox.capture import Synced
from bridge.sync.lww import LastWriterWins, Stale, SyncedTable

T0 = datetime(2026, 1, 1, tzinfo=UTC)
US = timedelta(microseconds=1)


class Base(DeclarativeBase):
    metadata = MetaData()


class Note(Synced, Base):
    __tablename__ = "notes"
    __bridge_resource__ = "note"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    body: Mapped[str] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    origin: Mapped[str] = mapped_column(String(64))
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(database_url)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    yield engine
    await engine.dispose()


def note(note_id: uuid.UUID, at: datetime, body: str, origin: str = "a", **kw: Any) -> Any:
    row = {"id": note_id, "body": body, "updated_at": at, "origin": origin, "deleted_at": None}
    row.update(kw)
    envelope = Envelope(
        event_type="note.updated",
        producer=origin,
        resource_type="note",
        resource_id=str(note_id),
        payload={},
    )
    return envelope, row


async def apply(engine: AsyncEngine, lww: LastWriterWins, *events: Any) -> None:
    async with AsyncSession(engine) as session, session.begin():
        await lww.apply(session, [e for e, _ in events], [r for _, r in events])


async def stored(engine: AsyncEngine, note_id: uuid.UUID) -> Note | None:
    async with AsyncSession(engine) as session:
        return (await session.execute(select(Note).where(Note.id == note_id))).scalar_one_or_none()


async def test_newer_wins_older_is_stale_and_a_run_is_judged_in_order(engine: AsyncEngine) -> None:
    reported: list[Stale] = []

    async def on_stale(session: AsyncSession, stale: Sequence[Stale]) -> None:
        reported.extend(stale)

    lww = LastWriterWins(SyncedTable(Note), on_stale=on_stale)
    n1, n2 = uuid.uuid4(), uuid.uuid4()
    # one run: n1 twice (the later one wins within the run), n2 as a tombstone
    await apply(
        engine,
        lww,
        note(n1, T0, "first"),
        note(n1, T0 + 2 * US, "second"),
        note(n2, T0, "gone", deleted_at=T0),
    )
    assert (await stored(engine, n1)).body == "second"  # type: ignore[union-attr]
    gone = await stored(engine, n2)
    assert gone is not None and gone.deleted_at == T0  # an unknown tombstone is kept

    await apply(engine, lww, note(n1, T0 + US, "older"))
    assert (await stored(engine, n1)).body == "second"  # type: ignore[union-attr]
    assert [(s.record_id, s.incoming["updated_at"], s.local["updated_at"]) for s in reported] == [
        (n1, T0 + US, T0 + 2 * US)
    ]

    # equal timestamps: the greater origin wins, on both sides alike
    await apply(engine, lww, note(n1, T0 + 2 * US, "from b", origin="b"))
    assert (await stored(engine, n1)).body == "from b"  # type: ignore[union-attr]


async def test_same_version_repairs_only_from_its_origin(engine: AsyncEngine) -> None:
    lww = LastWriterWins(SyncedTable(Note))
    n = uuid.uuid4()
    await apply(engine, lww, note(n, T0, "right", origin="a"))
    async with engine.begin() as conn:  # a hand edit that did not bump the version
        await conn.execute(Note.__table__.update().values(body="edited by hand"))
    envelope, row = note(n, T0, "right", origin="a")
    other = Envelope(
        event_type="note.updated", producer="b", resource_type="note", resource_id=str(n),
        payload={},
    )  # fmt: skip
    await apply(engine, lww, (other, row))  # producer b is not the version's origin
    assert (await stored(engine, n)).body == "edited by hand"  # type: ignore[union-attr]
    await apply(engine, lww, (envelope, row))  # the origin re-emits: repaired
    assert (await stored(engine, n)).body == "right"  # type: ignore[union-attr]


async def test_a_version_from_beyond_the_clock_skew_is_refused(engine: AsyncEngine) -> None:
    lww = LastWriterWins(SyncedTable(Note), clock=lambda: T0, max_clock_skew=60.0)
    n = uuid.uuid4()
    await apply(engine, lww, note(n, T0 + timedelta(seconds=59), "within"))
    with pytest.raises(Reject) as refused:
        await apply(engine, lww, note(n, T0 + timedelta(seconds=61), "from the future"))
    assert refused.value.reason == "future_version"
    assert (await stored(engine, n)).body == "within"  # type: ignore[union-attr]
