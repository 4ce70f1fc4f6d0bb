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
from collections.abc import AsyncIterator
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
from bridge.outbox.capture import Outbox, Synced, skip_publish
from bridge.outbox.keys import resource_id_of
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
        rows = await conn.execute(text("SELECT payload FROM bridge_outbox ORDER BY id"))
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
