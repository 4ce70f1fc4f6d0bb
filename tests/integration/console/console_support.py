"""A running bridge with its console, over ASGI, for the console's router tests.

Real nats-server and PostgreSQL.  The app's handler applies ``organization.created``
events into ``handled`` unless their record is in ``reject`` (then it raises
``Reject``: a dead letter, replayable once the record leaves ``reject``).
:meth:`ConsoleStack.publish_as_peer` publishes on the app's consume subject as the
peer would; :meth:`ConsoleStack.dead_letters` waits for letters to be stored.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from bridge import Bridge, BridgeConfig, ConsumerOptions, Reject, Router, bridge_lifespan
from bridge.envelope import Envelope
from bridge.integrations.console.app import Console, mount_console
from bridge.integrations.console.options import ConsoleOptions
from bridge.routing.letter import DeadLetter
from bridge.schema import create_all

TOKEN = "operator-token-0123456789"
_CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')


def make_config(nats_url: str, unique: str, **overrides: Any) -> BridgeConfig:
    values: dict[str, Any] = {
        "app_name": f"c{unique}",
        "destination_app": f"p{unique}",
        "stream_name": f"s{unique}",
        "nats_urls": (nats_url,),
        "ack_wait": 5.0,
        "max_deliver": 3,
        "backoff": (0.2, 0.4),
        "duplicate_window": 30.0,
        "consumer": ConsumerOptions(fetch_timeout=0.2),
    }
    values.update(overrides)
    return BridgeConfig(**values)


async def eventually(condition: Callable[[], bool], *, what: str, timeout: float = 15.0) -> None:
    """Wait until ``condition()`` holds (polling); fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        await asyncio.sleep(0.05)


@dataclass
class ConsoleStack:
    app: FastAPI
    bridge: Bridge
    console: Console
    client: httpx.AsyncClient
    handled: list[str] = field(default_factory=list)
    reject: set[str] = field(default_factory=set)

    @property
    def config(self) -> BridgeConfig:
        return self.bridge.config

    async def publish_as_peer(
        self, resource_id: str, *, data: bytes | None = None, headers: dict[str, str] | None = None
    ) -> None:
        """An ``organization.created`` of ``resource_id`` from the peer, or raw ``data``."""
        envelope = Envelope(
            event_type="organization.created",
            producer=self.config.destination_app,
            resource_type="organization",
            resource_id=resource_id,
            payload={"id": resource_id, "name": "Acme"},
        )
        js = self.bridge.connection.js
        await js.publish(
            self.config.subjects.consume,
            data if data is not None else envelope.to_bytes(),
            headers=headers if headers is not None else envelope.headers(),
        )

    async def dead_letters(self, count: int, timeout: float = 15.0) -> list[DeadLetter]:
        """Wait until at least ``count`` dead letters are stored; return them all."""
        assert self.bridge.dead_letters is not None
        deadline = time.monotonic() + timeout
        letters: list[DeadLetter] = []
        while time.monotonic() < deadline:
            letters = await self.bridge.dead_letters.list()
            if len(letters) >= count:
                return letters
            await asyncio.sleep(0.05)
        raise AssertionError(f"{count} dead letters not stored within {timeout}s: {letters}")

    async def sign_in(self, token: str = TOKEN) -> httpx.Response:
        return await self.client.post("/console/login", data={"token": token})

    async def csrf(self) -> str:
        """The CSRF token of the signed-in page's forms."""
        page = await self.client.get("/console/")
        found = _CSRF.search(page.text)
        assert found is not None, "no CSRF token on the page: not signed in?"
        return found.group(1)


@asynccontextmanager
async def console_stack(
    nats_url: str, database_url: str, unique: str, *, options: ConsoleOptions | None = None,
    **overrides: Any,
) -> AsyncIterator[ConsoleStack]:  # fmt: skip
    """The bridge of a fresh app (its tables created), its console mounted and started."""
    engine = create_async_engine(database_url, pool_size=5)
    await create_all(engine)
    stack_ref: dict[str, ConsoleStack] = {}

    async def apply(session: AsyncSession, envelope: Envelope) -> None:
        console_stack_ = stack_ref["stack"]
        if envelope.resource_id in console_stack_.reject:
            raise Reject(f"record {envelope.resource_id} refused by the test handler")
        console_stack_.handled.append(envelope.resource_id)

    router = Router()
    router.on("organization.created", apply)
    config = make_config(nats_url, unique, **overrides)
    app = FastAPI(
        lifespan=bridge_lifespan(lambda _app: Bridge(config, engine=engine, router=router))
    )
    console = Console(options or ConsoleOptions(token=TOKEN, sample_interval=0.2))
    mount_console(app, console)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(engine.dispose)
        await stack.enter_async_context(app.router.lifespan_context(app))
        client = await stack.enter_async_context(
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://console.test"
            )
        )
        result = ConsoleStack(app, app.state.bridge, console, client)
        stack_ref["stack"] = result
        yield result
