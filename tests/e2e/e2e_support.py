"""Support for the e2e tests: both services in one process, two databases, one nats-server.

:func:`start_side` starts System A and System B through their real lifespans (bridge,
relay, consumer) with fast test timings and per-test app and stream names, and
gives each an ``httpx.AsyncClient`` over ASGI.  Helpers poll with a deadline;
nothing sleeps a fixed amount.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import httpx
from fastapi import FastAPI
from nats.js import JetStreamContext
from sqlalchemy import text

from bridge.config import BridgeConfig, ConsumerOptions, RelayOptions
from bridge.envelope import utcnow
from bridge.event_schemas import EventSchemas
from bridge.ids import compose
from bridge.testing import PostgresServer
from services.shared.app import create_app
from services.shared.db import migrate
from services.shared.settings import ServiceSettings
from services.shared.state import ServiceState

T = TypeVar("T")

#: Short backoff and poll intervals: retries come back in well under a second or two.
FAST = {
    "backoff": (0.2, 0.5, 1.0),
    "max_deliver": 5,
    "ack_wait": 5.0,
    "duplicate_window": 30.0,
    "relay": RelayOptions(poll_interval=0.1, lease=5.0, retry_base=0.05, retry_max=0.5),
    "consumer": ConsumerOptions(fetch_timeout=0.2),
}


#: Ids for records a test crafts as another system's (system 9: neither side issues them).
_CRAFTED_IDS = itertools.count(compose(utcnow(), 0, 9), 64)


def new_id() -> int:
    """A fresh record id, never repeated in a run, that neither side's database issues."""
    return next(_CRAFTED_IDS)


async def eventually(
    probe: Callable[[], Awaitable[T | None]],
    *,
    timeout: float = 20.0,
    interval: float = 0.1,
    what: str = "condition",
) -> T:
    """Poll ``probe`` until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout}s (last: {last!r})")


@dataclass
class Side:
    """One running service: its app, client, database URL and bridge config."""

    name: str
    app: FastAPI
    client: httpx.AsyncClient
    database_url: str
    config: BridgeConfig

    @property
    def state(self) -> ServiceState:
        state: ServiceState = self.app.state.service
        return state

    async def rows(self, table: str) -> list[dict[str, Any]]:
        """Every row of ``table`` (tombstones included), ordered by id."""
        async with self.state.engine.connect() as conn:
            result = await conn.execute(text(f"SELECT * FROM {table} ORDER BY id"))
            return [dict(row) for row in result.mappings()]

    async def scalar(self, sql: str) -> Any:
        async with self.state.engine.connect() as conn:
            return (await conn.execute(text(sql))).scalar()

    async def get(self, path: str) -> httpx.Response:
        return await self.client.get(path)


@dataclass
class Pair:
    a: Side
    b: Side
    stream: str
    js: JetStreamContext

    async def subject_counts(self) -> dict[str, int]:
        """Messages in the stream per subject (both directions and both DLQs)."""
        info = await self.js.stream_info(self.stream, subjects_filter=">")
        return dict(info.state.subjects or {})


async def new_database(stack: AsyncExitStack, postgres: PostgresServer) -> str:
    """A fresh, migrated database, dropped when ``stack`` closes."""
    url = await postgres.create_database()
    stack.push_async_callback(postgres.drop_database, url)
    await migrate(url)
    return url


async def start_side(
    stack: AsyncExitStack,
    postgres: PostgresServer,
    *,
    name: str,
    peer: str,
    stream: str,
    nats_url: str,
    consumer_mode: Literal["pull", "push"] = "pull",
    database_url: str | None = None,
    event_schemas: EventSchemas | None = None,
    **overrides: Any,
) -> Side:
    """Start one service; ``database_url`` reuses a database (a restart), else a new one."""
    url = database_url or await new_database(stack, postgres)
    settings = ServiceSettings(
        app_name=name,
        destination_app=peer,
        database_url=url,
        db_pool_size=5,
        id_system_number=1 if name < peer else 2,  # each side its own
    )
    env = {"NATS_URL": nats_url, "STREAM_NAME": stream, "CONSUMER_MODE": consumer_mode}
    config = settings.to_bridge_config(env=env, **{**FAST, **overrides})
    app = create_app(settings, bridge_config=config, event_schemas=event_schemas)
    await stack.enter_async_context(app.router.lifespan_context(app))
    client = await stack.enter_async_context(
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{name}")
    )
    return Side(name, app, client, url, config)


async def start_pair(
    stack: AsyncExitStack, postgres: PostgresServer, *, unique: str, stream: str, nats_url: str
) -> tuple[Side, Side]:
    """System A and System B of one test (names from ``unique``), syncing over ``stream``."""
    a = await start_side(
        stack, postgres, name=f"a{unique}", peer=f"b{unique}", stream=stream, nats_url=nats_url
    )
    b = await start_side(
        stack, postgres, name=f"b{unique}", peer=f"a{unique}", stream=stream, nats_url=nats_url
    )
    return a, b
