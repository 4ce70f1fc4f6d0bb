"""The README's Python code runs: its blocks are extracted and executed as written, then the
quickstart app is served against a real nats-server and PostgreSQL — a POST is captured
and published, and the peer's change arrives through the README's handler and middleware."""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
import types
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from bridge import Envelope
from bridge.envelope import format_timestamp
from bridge.schema import create_all
from bridge.testing import NatsServer, to_async_url
from bridge.transport.connection import Connection
from bridge.transport.publisher import Publisher

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def python_blocks() -> list[str]:
    return BLOCK.findall(README.read_text(encoding="utf-8"))


def test_the_readme_has_a_quickstart_with_one_import_line_from_bridge() -> None:
    blocks = python_blocks()
    assert len(blocks) >= 2
    quickstart = blocks[0]
    assert len(re.findall(r"^from bridge import", quickstart, re.MULTILINE)) == 1
    assert not re.search(r"^(from|import) bridge\.", quickstart, re.MULTILINE)
    for block in blocks:
        compile(block, str(README), "exec")


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.fixture
def own_nats() -> AsyncIterator[NatsServer]:
    # the README names its apps system_a / system_b and the default stream: a server of its own
    with NatsServer() as server:
        yield server


async def test_the_readme_code_runs_against_real_servers(
    own_nats: NatsServer,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = to_async_url(database_url)
    monkeypatch.setenv("NATS_URL", own_nats.url)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.delenv("CONSUMER_MODE", raising=False)
    monkeypatch.delenv("CONSUMER_MODE_SYSTEM_A", raising=False)
    module = types.ModuleType("readme_quickstart")  # SQLAlchemy resolves names in it
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace: dict[str, Any] = module.__dict__
    for block in python_blocks():
        exec(compile(block, str(README), "exec"), namespace)
    app, engine = namespace["app"], namespace["engine"]
    # the bridge's tables, the model's table and its capture trigger (migrations in production)
    await create_all(engine, models=[namespace["Organization"]])

    caplog.set_level(logging.INFO, logger="app.sync")
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a") as api,
    ):
        # a local write: captured in the same transaction, published by the relay
        created = await api.post("/organizations", params={"name": "Acme", "budget": "12.50"})
        assert created.status_code == 200, created.text
        org_id = created.json()["id"]

        async def published() -> bool:
            async with engine.connect() as conn:
                status = await conn.scalar(text("SELECT status FROM bridge_outbox"))
            return status == "sent"

        await eventually(published, "the outbox row published")

        # the peer's newer version of it arrives: the README's handler applies it
        config = namespace["config"]
        peer = config.with_(app_name="system_b", destination_app="system_a")
        connection = Connection(peer)
        await connection.start(timeout=10)
        try:
            later = format_timestamp(datetime.now(UTC) + timedelta(seconds=1))
            envelope = Envelope(
                event_type="organization.updated",
                producer="system_b",
                resource_type="organization",
                resource_id=org_id,
                payload={"id": org_id, "name": "Acme (renamed on B)", "budget": "12.50",
                         "updated_at": later,
                         "origin": "system_b", "deleted_at": None},
            )  # fmt: skip
            await Publisher(connection.js, stream=peer.stream_name).publish(
                peer.subjects.publish, envelope
            )
        finally:
            await connection.stop(timeout=5)
        check = create_async_engine(url)
        try:

            async def applied() -> bool:
                async with check.connect() as conn:
                    name = await conn.scalar(
                        text("SELECT name FROM organizations WHERE id = :id"),
                        {"id": uuid.UUID(org_id)},
                    )
                return name == "Acme (renamed on B)"

            await eventually(applied, "the peer's change applied")
        finally:
            await check.dispose()
    await engine.dispose()
    assert "applying 1 event(s)" in caplog.messages  # the README's middleware ran


async def test_the_readme_harness_example_test_passes(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's example test of a handler with ``BridgeHarness``: no NATS server."""
    url = to_async_url(database_url)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.delenv("CONSUMER_MODE", raising=False)
    monkeypatch.delenv("CONSUMER_MODE_SYSTEM_A", raising=False)
    module = types.ModuleType("readme_harness")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace: dict[str, Any] = module.__dict__
    for block in python_blocks():
        exec(compile(block, str(README), "exec"), namespace)
    example = namespace["test_an_organization_from_the_peer_is_applied_once"]
    engine = namespace["engine"]
    try:
        async with engine.begin() as conn:
            await conn.run_sync(namespace["Base"].metadata.create_all)
        await create_all(engine)
        await example(engine)
    finally:
        await engine.dispose()
