"""The FastAPI integration a user mounts: ``bridge_lifespan`` composed with the app's own
lifespan, ``app.include_router(bridge_router())`` for ``/health`` (503 when degraded),
``/metrics`` and ``/sync_status``, and the typed ``BridgeDep`` — against a real
nats-server and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import String
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bridge import Bridge, BridgeConfig, ConsumerOptions, RelayOptions, Synced, bridge_lifespan
from bridge.errors import BridgeError
from bridge.integrations.fastapi import BridgeDep, bridge_router
from bridge.schema import create_all
from bridge.testing import NatsServer


class Base(DeclarativeBase):
    pass


class Widget(Synced, Base):
    __tablename__ = "widgets"
    __bridge_resource__ = "widget"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))


def config(nats: NatsServer, unique: str) -> BridgeConfig:
    return BridgeConfig(
        app_name=f"web{unique}", destination_app=f"peer{unique}", stream_name=f"web{unique}",
        nats_urls=(nats.url,), reconnect_wait=0.1, connect_timeout=0.5,
        relay=RelayOptions(poll_interval=0.2), consumer=ConsumerOptions(fetch_timeout=0.3),
    )  # fmt: skip


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app")


async def prepared_engine(database_url: str) -> AsyncEngine:
    engine = create_async_engine(database_url)
    await create_all(engine, models=[Widget])  # the bridge's tables, Widget's and its trigger
    return engine


async def test_the_app_lifespan_runs_around_the_bridge_and_its_state_is_yielded(
    nats_server: NatsServer, database_url: str, unique: str
) -> None:
    steps: list[str] = []

    @asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        app.state.engine = await prepared_engine(database_url)
        steps.append("app started")
        yield {"greeting": "hello"}
        assert app.state.bridge.connection.state == "closed"  # stopped before us
        steps.append("app stopping")
        await app.state.engine.dispose()

    def make(app: FastAPI) -> Bridge:
        steps.append("bridge built")
        return Bridge(config(nats_server, unique), engine=app.state.engine)

    app = FastAPI(lifespan=bridge_lifespan(make, lifespan=own))

    @app.get("/whoami")
    async def whoami(bridge: BridgeDep) -> dict[str, str]:
        return {"app": bridge.config.app_name}

    async with app.router.lifespan_context(app) as state, client(app) as http:
        # the lifespan's state is what the app's own lifespan yielded
        assert state == {"greeting": "hello"}
        assert app.state.bridge.connection.is_connected
        whoami_answer = (await http.get("/whoami")).json()
        assert whoami_answer == {"app": f"web{unique}"}
        steps.append("serving")
    assert steps == ["app started", "bridge built", "serving", "app stopping"]


async def test_one_line_mounts_health_metrics_and_sync_status(
    nats_server: NatsServer, database_url: str, unique: str
) -> None:
    engine = await prepared_engine(database_url)
    cfg = config(nats_server, unique)
    app = FastAPI(lifespan=bridge_lifespan(lambda app: Bridge(cfg, engine=engine)))
    app.include_router(bridge_router())
    try:
        async with app.router.lifespan_context(app), client(app) as http:
            bridge: Bridge = app.state.bridge
            async with bridge.session_factory.begin() as session:
                session.add(Widget(id=str(uuid.uuid4()), name="captured"))
            deadline = time.monotonic() + 20
            while (status := (await http.get("/sync_status")).json())["outbox"]["sent"] < 1:
                assert time.monotonic() < deadline, status
                await asyncio.sleep(0.1)
            assert status["app"] == cfg.app_name and status["jetstream_connected"] is True
            assert status["outbox"]["pending"] == 0 and status["outbox"]["failed"] == 0
            assert status["inbox"] == {"total": 0, "processed": 0, "failed": 0,
                                       "dead_lettered": 0}  # fmt: skip
            assert status["dead_letters"] == 0 and status["reconciliation"] is None
            assert status["consumer"]["mode"] == "pull"
            health = await http.get("/health")
            assert health.status_code == 200 and health.json()["status"] == "ok"
            metrics = await http.get("/metrics")
            assert metrics.status_code == 200
            assert "bridge_events_published_total 1.0" in metrics.text
            assert metrics.headers["content-type"].startswith("text/plain")
    finally:
        await engine.dispose()


async def test_health_is_503_while_nats_is_down(database_url: str, unique: str) -> None:
    engine = await prepared_engine(database_url)
    server = NatsServer().start()
    bridge = Bridge(config(server, unique), engine=engine)
    app = FastAPI(lifespan=bridge_lifespan(lambda app: bridge))
    app.include_router(bridge_router(prefix="/ops", sync_status=False, metrics=False))
    try:
        async with app.router.lifespan_context(app), client(app) as http:
            assert (await http.get("/ops/health")).status_code == 200
            assert (await http.get("/ops/sync_status")).status_code == 404  # left out
            server.stop()
            deadline = time.monotonic() + 15
            while (health := await http.get("/ops/health")).status_code != 503:
                assert time.monotonic() < deadline, health.text
                await asyncio.sleep(0.1)
            assert health.json()["status"] == "degraded"
            assert health.json()["nats"]["connected"] is False
            server.start()
    finally:
        server.cleanup()
        await engine.dispose()


async def test_an_application_adds_its_fields_to_sync_status_for_a_given_bridge(
    nats_server: NatsServer, database_url: str, unique: str
) -> None:
    engine = await prepared_engine(database_url)
    bridge = Bridge(config(nats_server, unique), engine=engine)

    async def extend(running: Bridge, document: dict[str, Any]) -> dict[str, Any]:
        assert running is bridge
        return {**document, "widgets": "many"}

    app = FastAPI()  # no lifespan: the router is given the bridge itself
    app.include_router(bridge_router(bridge, sync_status=extend))
    try:
        async with bridge, client(app) as http:
            status = (await http.get("/sync_status")).json()
            assert status["widgets"] == "many" and status["outbox"]["sent"] == 0
    finally:
        await engine.dispose()


async def test_the_typed_accessor_says_what_to_do_without_a_bridge() -> None:
    app = FastAPI()

    @app.get("/whoami")
    async def whoami(bridge: BridgeDep) -> str:
        return bridge.config.app_name

    async with client(app) as http:
        with pytest.raises(BridgeError, match="bridge_lifespan"):
            await http.get("/whoami")
