"""Capture in PostgreSQL: every way of writing a synced table reaches the stream.

ORM flush, ORM-enabled bulk insert/update/delete, Core insert, raw ``text()`` SQL and a
psql-style statement on a plain asyncpg connection (no bridge session at all) each
produce outbox rows the relay publishes; rollback, the skip setting, a statement that
changes no row and an UPDATE that changes nothing produce none.  Integer, UUID, text
and composite keys; payload values decode as the consumers always read them; a
trigger failure aborts the writer's statement; an oversized row is still captured and
the relay's rejected-message path handles it.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from nats.aio.client import Client
from sqlalchemy import (
    BigInteger,
    Date,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    delete,
    insert,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bridge import schema
from bridge.envelope import Envelope, format_timestamp, parse_timestamp
from bridge.keys import PrimaryKey
from bridge.outbox.body import envelope_sql
from bridge.outbox.capture import Outbox, Synced, skip_publish
from bridge.outbox.relay import OutboxRelay
from bridge.testing import NatsServer

from .conftest import (
    count_rows,
    eventually,
    provision_stream,
    publisher_for,
    relay_config,
    scalar,
    sessions_for,
    stream_bodies,
)


class Base(DeclarativeBase):
    metadata = MetaData()


class Product(Synced, Base):
    """A third-party model: text key, exact price, JSONB, soft delete."""

    __tablename__ = "products"
    __bridge_resource__ = "product"
    __bridge_tombstone__ = "deleted_at"

    sku: Mapped[str] = mapped_column(String(400), primary_key=True)
    price: Mapped[Decimal] = mapped_column(Numeric(14, 4))
    attributes: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    tags: Mapped[list[str]] = mapped_column(ARRAY(String), default=list)
    photo: Mapped[bytes | None] = mapped_column(LargeBinary)
    released_on: Mapped[date | None] = mapped_column(Date)
    # attribute name differs from the column name: the payload uses the attribute's
    stock_note: Mapped[str | None] = mapped_column("note", String(100_000))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=lambda: datetime.now(UTC)
    )
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Counter(Synced, Base):
    __tablename__ = "counters"
    __bridge_resource__ = "counter"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    value: Mapped[int] = mapped_column(Integer)


class Token(Synced, Base):
    __tablename__ = "tokens"
    __bridge_resource__ = "token"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    label: Mapped[str] = mapped_column(String(50))


class Stock(Synced, Base):
    __tablename__ = "stock"
    __bridge_resource__ = "stock"

    warehouse: Mapped[int] = mapped_column(Integer, primary_key=True)
    sku: Mapped[str] = mapped_column(String(64), primary_key=True)
    quantity: Mapped[int] = mapped_column(Integer)


MODELS = [Product, Counter, Token, Stock]


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_async_engine(database_url, pool_size=5)
    await schema.create_all(eng, models=MODELS)
    yield eng
    await eng.dispose()


def asyncpg_dsn(database_url: str) -> str:
    return database_url.replace("postgresql+asyncpg://", "postgresql://")


async def outbox_bodies(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(text(f"SELECT {envelope_sql()} FROM bridge_outbox ORDER BY id"))
        return [dict(r) for r in rows.scalars()]


def summary(bodies: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(b["event_type"], b["resource_id"]) for b in bodies]


async def test_every_write_path_reaches_the_stream(
    engine: AsyncEngine, database_url: str, nc: Client, nats_server: NatsServer, unique: str
) -> None:
    cfg = relay_config(nats_server.url, unique)
    await provision_stream(nc, cfg)
    box = Outbox(cfg)
    await box.record_producer(engine)  # what a bridge start does: for the psql write
    sessions = sessions_for(engine, box)
    relay = OutboxRelay(cfg, engine, publisher_for(nc, cfg), outbox=box)
    await relay.start()
    try:
        async with sessions.begin() as session:  # ORM flush
            session.add(Product(sku="flush", price=Decimal("1.5")))
        async with sessions.begin() as session:  # ORM-enabled bulk insert
            await session.execute(
                insert(Product), [{"sku": f"bulk-{i}", "price": Decimal(i)} for i in range(3)]
            )
        async with sessions.begin() as session:  # ORM-enabled bulk update: the case
            result = await session.execute(
                update(Product).where(Product.sku.like("bulk-%")).values(price=Decimal("9.99"))
            )
            assert result.rowcount == 3  # type: ignore[attr-defined]
        async with sessions.begin() as session:  # Core insert on the table
            await session.execute(insert(Product.__table__).values(sku="core", price=2))
        async with sessions.begin() as session:  # raw SQL through the session
            await session.execute(text("UPDATE products SET price = 3 WHERE sku = 'core'"))
        async with sessions.begin() as session:  # ORM-enabled bulk delete
            await session.execute(delete(Product).where(Product.sku == "bulk-0"))
        conn = await asyncpg.connect(asyncpg_dsn(database_url))  # psql: no bridge session
        try:
            await conn.execute("UPDATE products SET price = price + 1 WHERE sku = 'flush'")
        finally:
            await conn.close()

        async def sent() -> bool:
            return await count_rows(engine, "status = 'sent'") == 11

        await eventually(sent, what="11 captured changes published")
    finally:
        await relay.stop(5.0)

    published = await stream_bodies(nc, cfg)
    # the consumer's view: every message decodes as an envelope
    envelopes = [Envelope.from_bytes(json.dumps(b).encode()) for b in published]
    assert sorted(summary(published)) == sorted(
        [
            ("product.created", "flush"),
            *[("product.created", f"bulk-{i}") for i in range(3)],
            *[("product.updated", f"bulk-{i}") for i in range(3)],
            ("product.created", "core"),
            ("product.updated", "core"),
            ("product.deleted", "bulk-0"),
            ("product.updated", "flush"),
        ]
    )
    by_path = {(e.event_type, e.resource_id): e for e in envelopes}
    assert by_path[("product.updated", "core")].payload["price"] == "3.0000"
    assert by_path[("product.updated", "flush")].payload["price"] == "2.5000"
    assert all(e.producer == e.origin == cfg.app_name for e in envelopes)


async def test_payload_values_decode_as_the_consumers_read_them(
    engine: AsyncEngine, nats_server: NatsServer, unique: str
) -> None:
    box = Outbox(relay_config(nats_server.url, unique))
    stamp = datetime(2026, 3, 4, 5, 6, 7, 89, tzinfo=UTC)
    async with sessions_for(engine, box).begin() as session:
        session.add(
            Product(
                sku="SKU-é",
                price=Decimal("19.9900"),
                attributes={"color": "red", "sizes": [1, 2], "nested": {"ok": True}},
                tags=["a", "b"],
                photo=b"\x00\xffhi",
                released_on=date(2025, 12, 31),
                stock_note="note",
                updated_at=stamp,
            )
        )
    [body] = await outbox_bodies(engine)
    envelope = Envelope.from_dict(body)
    assert envelope.payload == {
        "sku": "SKU-é",
        "price": "19.9900",  # exact: a string, as json_safe wrote a Decimal
        "attributes": {"color": "red", "sizes": [1, 2], "nested": {"ok": True}},
        "tags": ["a", "b"],
        "photo": "00ff6869",
        "released_on": "2025-12-31",
        "stock_note": "note",
        "updated_at": format_timestamp(stamp),
        "deleted_at": None,
    }
    assert envelope.event_type == "product.created" and envelope.resource_type == "product"
    assert envelope.schema_version == 1 and envelope.causation_id is None
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", envelope.occurred_at)
    assert abs((parse_timestamp(envelope.occurred_at) - datetime.now(UTC)).total_seconds()) < 60
    assert re.fullmatch(r"[0-9a-f]{32}", envelope.trace_id or "")  # generated: no trace
    assert str(uuid.UUID(envelope.event_id)) == envelope.event_id


async def test_integer_uuid_text_and_composite_keys(
    engine: AsyncEngine, nats_server: NatsServer, unique: str
) -> None:
    box = Outbox(relay_config(nats_server.url, unique))
    token_id = uuid.uuid4()
    async with sessions_for(engine, box).begin() as session:
        counter = Counter(value=1)
        session.add_all([counter, Token(id=token_id, label="t"), Product(sku="x", price=1)])
        session.add(Stock(warehouse=7, sku="EU-é", quantity=3))
    ids = {b["resource_type"]: b["resource_id"] for b in await outbox_bodies(engine)}
    assert ids == {
        "counter": str(counter.id),
        "token": str(token_id),
        "product": "x",
        "stock": '[7, "EU-é"]',
    }
    # the Python rule names the same records (backfill, reconciliation)
    assert ids["stock"] == PrimaryKey.resource_id([7, "EU-é"])
    assert ids["token"] == PrimaryKey.resource_id([token_id])
    assert ids["counter"] == PrimaryKey.resource_id([counter.id])
    rows = await outbox_bodies(engine)
    assert next(b for b in rows if b["resource_type"] == "counter")["payload"]["id"] == counter.id


async def test_rollback_skip_and_no_change_write_nothing(
    engine: AsyncEngine, database_url: str, nats_server: NatsServer, unique: str
) -> None:
    box = Outbox(relay_config(nats_server.url, unique))
    await box.record_producer(engine)
    sessions = sessions_for(engine, box)
    async with sessions.begin() as session:
        session.add(Counter(id=1, value=1))
    assert await count_rows(engine) == 1
    async with sessions() as session:  # rollback
        await session.execute(update(Counter).values(value=2))
        session.add(Counter(id=2, value=2))
        await session.flush()
        await session.rollback()
    async with sessions.begin() as session:  # the peer's change, applied: no echo
        with skip_publish(session):
            await session.execute(update(Counter).values(value=5))
            await session.execute(text("INSERT INTO counters (id, value) VALUES (3, 3)"))
    async with sessions.begin() as session:  # changes nothing / matches no row
        await session.execute(update(Counter).where(Counter.id == 1).values(value=5))
        await session.execute(update(Counter).where(Counter.id == 999).values(value=1))
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:  # a raw-SQL user says the same
        async with conn.transaction():
            await conn.execute("SET LOCAL bridge.capture = 'off'")
            await conn.execute("DELETE FROM counters WHERE id = 3")
        await conn.execute("UPDATE counters SET value = 6 WHERE id = 1")  # captured again
    finally:
        await conn.close()
    assert summary(await outbox_bodies(engine)) == [
        ("counter.created", "1"),
        ("counter.updated", "1"),
    ]
    assert await scalar(engine, "SELECT value FROM counters WHERE id = 1") == 6


async def test_a_tombstone_and_a_delete_are_deleted_events(
    engine: AsyncEngine, nats_server: NatsServer, unique: str
) -> None:
    box = Outbox(relay_config(nats_server.url, unique))
    sessions = sessions_for(engine, box)
    async with sessions.begin() as session:
        session.add_all([Product(sku="soft", price=1), Product(sku="hard", price=1)])
    async with sessions.begin() as session:
        await session.execute(
            update(Product).where(Product.sku == "soft").values(deleted_at=datetime.now(UTC))
        )
        await session.execute(delete(Product).where(Product.sku == "hard"))
    bodies = await outbox_bodies(engine)
    assert summary(bodies)[2:] == [("product.deleted", "soft"), ("product.deleted", "hard")]
    assert bodies[2]["payload"]["deleted_at"] is not None
    assert bodies[3]["payload"]["sku"] == "hard"  # the row as it was


async def test_the_sessions_trace_reaches_the_envelope_and_headers(
    engine: AsyncEngine, nats_server: NatsServer, unique: str
) -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    box = Outbox(relay_config(nats_server.url, unique), traceparent=lambda: traceparent)
    async with sessions_for(engine, box).begin() as session:
        session.add(Counter(value=1))
    async with engine.connect() as conn:
        headers, body = (
            await conn.execute(text(f"SELECT headers, {envelope_sql()} FROM bridge_outbox"))
        ).one()
    assert headers == {"traceparent": traceparent}  # the relay adds Nats-Msg-Id
    assert body["trace_id"] == "0af7651916cd43dd8448eb211c80319c"


async def test_a_trigger_failure_aborts_the_writers_statement(
    engine: AsyncEngine, database_url: str, nats_server: NatsServer, unique: str
) -> None:
    box = Outbox(relay_config(nats_server.url, unique))
    sessions = sessions_for(engine, box)
    # a key longer than bridge_outbox.resource_id: the change cannot get its event
    with pytest.raises(DBAPIError, match="value too long"):
        async with sessions.begin() as session:
            session.add(Product(sku="k" * 300, price=1))
    assert await scalar(engine, "SELECT count(*) FROM products") == 0
    # no producer recorded and no bridge session: refused, naming the fix
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        with pytest.raises(asyncpg.PostgresError, match="no producer recorded"):
            await conn.execute("INSERT INTO counters (id, value) VALUES (1, 1)")
        async with sessions.begin() as session:
            session.add(Counter(id=2, value=2))
        # TRUNCATE fires no row trigger: refused unless capture is off
        with pytest.raises(asyncpg.PostgresError, match="TRUNCATE of synced table counters"):
            await conn.execute("TRUNCATE counters")
        async with conn.transaction():
            await conn.execute("SET LOCAL bridge.capture = 'off'")
            await conn.execute("TRUNCATE counters")
    finally:
        await conn.close()
    assert summary(await outbox_bodies(engine)) == [("counter.created", "2")]
    assert await scalar(engine, "SELECT count(*) FROM counters") == 0


@pytest.fixture
def small_nats() -> Iterator[NatsServer]:
    server = NatsServer(config="max_payload: 4096").start()
    yield server
    server.cleanup()


async def test_an_oversized_row_is_captured_and_the_relay_fails_it_visibly(
    engine: AsyncEngine, small_nats: NatsServer, unique: str
) -> None:
    import nats

    cfg = relay_config(small_nats.url, unique, max_attempts=2, retry_base=0.05, retry_max=0.1)
    nc = await nats.connect(small_nats.url)
    try:
        await provision_stream(nc, cfg)
        box = Outbox(cfg)
        relay = OutboxRelay(cfg, engine, publisher_for(nc, cfg), outbox=box)
        await relay.start()
        try:
            async with sessions_for(engine, box).begin() as session:
                session.add(Product(sku="big", price=1, stock_note="x" * 10_000))
                session.add(Product(sku="small", price=1))
            assert await count_rows(engine) == 2  # the change committed with its event

            async def settled() -> bool:
                failed = await count_rows(engine, "status = 'failed'")
                return failed == 1 and await count_rows(engine, "status = 'sent'") == 1

            await eventually(settled, what="oversized row failed, the other sent")
        finally:
            await relay.stop(5.0)
        error = await scalar(engine, "SELECT last_error FROM bridge_outbox WHERE status = 'failed'")
        assert "max_payload" in error or "too large" in error.lower()
        assert [b["resource_id"] for b in await stream_bodies(nc, cfg)] == ["small"]
    finally:
        await nc.close()


async def test_infinite_timestamps_read_as_python_reads_them(
    engine: AsyncEngine, database_url: str, nats_server: NatsServer, unique: str
) -> None:
    box = Outbox(relay_config(nats_server.url, unique))
    await box.record_producer(engine)
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await conn.execute(
            "INSERT INTO products (sku, price, attributes, tags, updated_at, deleted_at) "
            "VALUES ('far', 1, '{}', '{}', 'infinity', '-infinity')"
        )
    finally:
        await conn.close()
    [body] = await outbox_bodies(engine)
    assert body["payload"]["updated_at"] == format_timestamp(datetime.max)
    assert body["payload"]["deleted_at"] == "0001-01-01T00:00:00.000000Z"  # ISO: 4-digit year
    assert body["event_type"] == "product.deleted"  # a tombstone, however far in the past
