"""Fixtures for outbox + relay tests: a synced test model, an engine with the bridge
tables, a provisioned stream, and helpers to read what reached the stream."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from nats.aio.client import Client
from sqlalchemy import DateTime, MetaData, String, text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bridge import schema
from bridge.config import BridgeConfig, RelayOptions
from bridge.outbox.capture import Outbox, Synced
from bridge.provisioning.provisioner import Provisioner
from bridge.provisioning.specs import stream_spec
from bridge.testing import NatsServer, PostgresServer
from bridge.transport.jsapi import JetStreamApi
from bridge.transport.publisher import Publisher


class Base(DeclarativeBase):
    metadata = MetaData()


class Widget(Synced, Base):
    __tablename__ = "widgets"
    __bridge_resource__ = "widget"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=lambda: str(uuid.uuid4()))
    name: Mapped[str] = mapped_column(String(100))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=lambda: datetime.now(UTC)
    )


def relay_config(nats_url: str, unique: str, **relay: Any) -> BridgeConfig:
    options = {"poll_interval": 0.2, "lease": 5.0, "retry_base": 0.05, "retry_max": 0.5, **relay}
    return BridgeConfig(
        app_name=f"a{unique}",
        destination_app=f"b{unique}",
        stream_name=f"s{unique}",
        nats_urls=(nats_url,),
        relay=RelayOptions(**options),
        duplicate_window=60.0,
        reconnect_wait=0.1,
    )


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_async_engine(database_url, pool_size=10)
    await schema.create_all(eng, models=[Widget])
    yield eng
    await eng.dispose()


@pytest.fixture
async def engines(postgres: PostgresServer) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine]]:
    urls = [await postgres.create_database() for _ in range(2)]
    engines = [create_async_engine(u) for u in urls]
    for eng in engines:
        await schema.create_all(eng, models=[Widget])
    yield engines[0], engines[1]
    for eng, url in zip(engines, urls, strict=True):
        await eng.dispose()
        await postgres.drop_database(url)


async def provision_stream(nc: Client, cfg: BridgeConfig) -> None:
    await Provisioner(JetStreamApi(nc)).apply(stream_spec(cfg), [])


async def stream_bodies(nc: Client, cfg: BridgeConfig) -> list[dict[str, Any]]:
    """Every message on the app's publish subject, in stream order."""
    js = nc.jetstream()
    info = await js.stream_info(cfg.stream_name)
    bodies = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(cfg.stream_name, seq)
        if msg.subject == cfg.subjects.publish:
            assert msg.headers is not None
            body = json.loads(msg.data or b"{}")
            assert msg.headers["Nats-Msg-Id"] == body["event_id"]
            bodies.append(body)
    return bodies


async def message_count(nc: Client, cfg: BridgeConfig) -> int:
    info = await nc.jetstream().stream_info(cfg.stream_name)
    return int(info.state.messages)


def publisher_for(nc: Client, cfg: BridgeConfig) -> Publisher:
    return Publisher(nc.jetstream(), stream=cfg.stream_name, timeout=cfg.relay.publish_timeout)


def sessions_for(engine: AsyncEngine, box: Outbox) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, sync_session_class=box.session_class, expire_on_commit=False)


async def eventually(
    check: Callable[[], Awaitable[bool]], *, timeout: float = 20.0, what: str = "condition"
) -> None:
    """Poll ``check`` every 50 ms until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.05)


async def scalar(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar()


async def count_rows(engine: AsyncEngine, where: str = "true", **params: Any) -> int:
    return int(await scalar(engine, f"SELECT count(*) FROM bridge_outbox WHERE {where}", **params))


async def outbox_order(engine: AsyncEngine) -> dict[str, list[str]]:
    """Event ids per resource id, in outbox id order."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT resource_id, event_id FROM bridge_outbox ORDER BY id")
        )
        order: dict[str, list[str]] = {}
        for resource_id, event_id in rows:
            order.setdefault(resource_id, []).append(str(event_id))
    return order


def stream_order(bodies: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Event ids per resource id, in stream order."""
    order: dict[str, list[str]] = {}
    for body in bodies:
        order.setdefault(body["resource_id"], []).append(body["event_id"])
    return order


__all__ = [
    "NatsServer",
    "Widget",
    "count_rows",
    "eventually",
    "message_count",
    "outbox_order",
    "provision_stream",
    "publisher_for",
    "relay_config",
    "scalar",
    "sessions_for",
    "stream_bodies",
    "stream_order",
]
