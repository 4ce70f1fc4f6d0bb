"""The scene the console's browser tests look at: System A and System B (the real
services, in this process), A served over real HTTP with its console, and traffic.

:func:`start_scene` starts both sides (fast test timings, per-test names and
databases; A's clock injectable), serves A with uvicorn on a free loopback port, then
makes what an operator would find: organizations created on both sides, a
reconciliation run that restored a row deleted behind the bridge's back, a
``future_version`` dead letter on A (B's change while A's clock was 10 minutes
behind, replayable once the clock is right), a malformed letter whose body and
headers are HTML and script, a natural-key conflict (dead-lettered too) and a stale
event.

:func:`launch_chromium` starts Debian's chromium through Playwright's
``executable_path`` (never a browser download) with a fresh profile.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
import uvicorn
from fastapi import FastAPI
from playwright.async_api import BrowserContext, async_playwright
from sqlalchemy import text

from bridge.config import BridgeConfig, ConsumerOptions, RelayOptions
from bridge.envelope import Envelope
from bridge.integrations.console.options import ConsoleOptions
from bridge.routing.letter import DeadLetter
from bridge.testing import PostgresServer
from services.shared.app import create_app
from services.shared.db import migrate
from services.shared.settings import ServiceSettings

T = TypeVar("T")
TOKEN = "browser-operator-token-0123"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
FAST: dict[str, Any] = {
    "backoff": (0.2, 0.5, 1.0),
    "max_deliver": 5,
    "ack_wait": 5.0,
    "duplicate_window": 30.0,
    "relay": RelayOptions(poll_interval=0.1, lease=5.0, retry_base=0.05, retry_max=0.5),
    "consumer": ConsumerOptions(fetch_timeout=0.2),
}
XSS_BODY = b'<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'
XSS_HEADER = '"><script>window.__xss = 3</script>'


def chromium_path() -> str:
    """Debian's chromium (or ``CHROMIUM``); a clear failure, never a skip, without it."""
    path = os.environ.get("CHROMIUM") or "/usr/bin/chromium"
    if not os.access(path, os.X_OK):
        raise RuntimeError(
            f"{path} is missing: the console's browser tests drive Debian's chromium; run "
            "`make browser-tools` (scripts/install_chromium.sh) or set CHROMIUM=/path"
        )
    return path


async def eventually(
    probe: Callable[[], Awaitable[T | None]], *, what: str, timeout: float = 20.0
) -> T:
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")


@dataclass
class Side:
    name: str
    app: FastAPI
    config: BridgeConfig
    client: httpx.AsyncClient

    async def create_org(self, domain: str) -> dict[str, Any]:
        response = await self.client.post("/organizations", json={"name": "Acme", "domain": domain})
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    async def has(self, path: str) -> bool:
        return (await self.client.get(path)).status_code == 200


@dataclass
class Scene:
    a: Side
    b: Side
    url: str  # A's console, e.g. http://127.0.0.1:PORT/console/
    future_letter: DeadLetter
    future_org_id: str
    xss_letter: DeadLetter
    shots: str
    clock_offset: list[timedelta] = field(default_factory=lambda: [timedelta(0)])

    def shot(self, name: str) -> str:
        return os.path.join(self.shots, name)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the test process owns its signals


@asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[str]:
    """``app`` over HTTP on a free loopback port (its lifespan already running)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = _Server(uvicorn.Config(app, log_config=None, lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await eventually(lambda: _started(server, task), what="uvicorn listening", timeout=10)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


async def _started(server: uvicorn.Server, task: asyncio.Task[None]) -> bool:
    if task.done():
        await task
    return bool(server.started)


async def start_side(
    stack: AsyncExitStack, postgres: PostgresServer, *, name: str, peer: str, stream: str,
    nats_url: str, clock: Callable[[], datetime] | None = None,
) -> Side:  # fmt: skip
    url = await postgres.create_database()
    stack.push_async_callback(postgres.drop_database, url)
    await migrate(url)
    settings = ServiceSettings(app_name=name, destination_app=peer, database_url=url,
                               db_pool_size=5,
                               id_system_number=1 if name < peer else 2)  # fmt: skip
    env = {"NATS_URL": nats_url, "STREAM_NAME": stream}
    overrides = {**FAST, **({"clock": clock} if clock else {})}
    config = settings.to_bridge_config(env=env, **overrides)
    options = ConsoleOptions(token=TOKEN, sample_interval=0.5, history="1m")
    app = create_app(settings, bridge_config=config, console_options=options)
    await stack.enter_async_context(app.router.lifespan_context(app))
    client = await stack.enter_async_context(
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{name}")
    )
    return Side(name, app, config, client)


async def publish_as(side: Side, js: Any, event_type: str, payload: dict[str, Any],
                     *, producer: str) -> None:  # fmt: skip
    """Publish on ``side``'s consume subject as ``producer`` would."""
    envelope = Envelope(
        event_type=event_type,
        producer=producer,
        resource_type=event_type.split(".", 1)[0],
        resource_id=str(payload["id"]),
        payload=payload,
        schema_version=2,
    )
    subject = side.config.subjects.consume
    await js.publish(subject, envelope.to_bytes(), headers=envelope.headers())


async def letters_of(side: Side, count: int) -> list[DeadLetter]:
    dead_letters = side.app.state.bridge.dead_letters

    async def stored() -> list[DeadLetter] | None:
        letters: list[DeadLetter] = await dead_letters.list()
        return letters if len(letters) >= count else None

    return await eventually(stored, what=f"{count} dead letters on {side.name}")


@asynccontextmanager
async def start_scene(
    postgres: PostgresServer, nats_url: str, unique: str, shots: str
) -> AsyncIterator[Scene]:
    offset = [timedelta(0)]  # A's clock, moved 10 minutes back for one change
    async with AsyncExitStack() as stack:
        stream = f"sync-{unique}"
        a = await start_side(stack, postgres, name=f"a{unique}", peer=f"b{unique}",
                             stream=stream, nats_url=nats_url,
                             clock=lambda: datetime.now(UTC) + offset[0])  # fmt: skip
        b = await start_side(stack, postgres, name=f"b{unique}", peer=f"a{unique}",
                             stream=stream, nats_url=nats_url)  # fmt: skip
        js = a.app.state.bridge.connection.js
        orgs: list[dict[str, Any]] = []
        for wave in range(3):  # a little shape in the charts
            orgs += [await a.create_org(f"a{wave}{n}-{unique}.test") for n in range(4 + 2 * wave)]
            orgs += [await b.create_org(f"b{wave}{n}-{unique}.test") for n in range(6 - 2 * wave)]
            await asyncio.sleep(0.7)
        for org in orgs:
            await eventually(lambda org=org: a.has(f"/organizations/{org['id']}"),
                             what="organizations on A")  # fmt: skip
        # A row deleted behind the bridge's back, restored by a reconciliation pass.
        async with a.app.state.service.engine.begin() as conn:
            await conn.execute(text("DELETE FROM organizations WHERE id = :id"),
                               {"id": orgs[-1]["id"]})  # fmt: skip
        report = await a.app.state.bridge.reconciler().run()
        assert report.repaired_from_peer == 1, report
        # B's change reaches A while A's clock is behind: future_version, kept and replayable.
        offset[0] = timedelta(minutes=-10)
        future = await b.create_org(f"future-{unique}.test")
        (future_letter,) = await letters_of(a, 1)
        offset[0] = timedelta(0)
        await js.publish(a.config.subjects.consume, XSS_BODY, headers={"x-note": XSS_HEADER})
        letters = await letters_of(a, 2)
        xss_letter = next(letter for letter in letters if letter.reason == "malformed")
        local = orgs[0]
        # A natural-key collision (another id, the same domain) and an older version.
        await publish_as(
            a,
            js,
            "organization.created",
            {**local, "id": local["id"] + 8, "origin": b.name},  # system 9: no side issues it
            producer=b.name,
        )
        older = (datetime.fromisoformat(local["updated_at"]) - timedelta(hours=1)).isoformat()
        await publish_as(a, js, "organization.updated",
                         {**local, "name": "Old name", "updated_at": older, "origin": b.name},
                         producer=b.name)  # fmt: skip
        await letters_of(a, 3)
        async with served(a.app) as base:
            yield Scene(a, b, f"{base}/console/", future_letter, future["id"], xss_letter,
                        shots, offset)  # fmt: skip


@asynccontextmanager
async def launch_chromium() -> AsyncIterator[BrowserContext]:
    """A headless Debian chromium with a fresh profile (module doc)."""
    with tempfile.TemporaryDirectory(prefix="console-chromium-") as profile:
        async with async_playwright() as playwright:
            context = await playwright.chromium.launch_persistent_context(
                profile, executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS,
                viewport={"width": 1400, "height": 900},
            )  # fmt: skip
            context.set_default_timeout(15_000)
            try:
                yield context
            finally:
                await context.close()
