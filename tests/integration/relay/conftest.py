"""Fixtures for outbox + relay tests: a synced test model, an engine with the bridge
tables, a provisioned stream, and helpers to read what reached the stream."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from nats.aio.client import Client
from sqlalchemy import DateTime, MetaData, String
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bridge import schema
from bridge.config import BridgeConfig, RelayOptions
from bridge.jsapi import JetStreamApi
from bridge.outbox import Synced
from bridge.provisioning import Provisioner, stream_spec
from bridge.testing import NatsServer, PostgresServer


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
    await schema.create_all(eng)
    async with eng.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    yield eng
    await eng.dispose()


@pytest.fixture
async def engines(postgres: PostgresServer) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine]]:
    urls = [await postgres.create_database() for _ in range(2)]
    engines = [create_async_engine(u) for u in urls]
    for eng in engines:
        await schema.create_all(eng)
        async with eng.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
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


__all__ = [
    "NatsServer",
    "Widget",
    "message_count",
    "provision_stream",
    "relay_config",
    "stream_bodies",
]
