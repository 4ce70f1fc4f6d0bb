"""Fixtures of the e2e tests: ``pair`` = System A + System B running in this process.

Each test gets its own app names, stream and databases (``unique``), so tests
never share JetStream or database state; the nats-server is the session's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import nats
import pytest
from e2e_support import Pair, start_pair

from bridge.testing import NatsServer, PostgresServer


@pytest.fixture
async def pair(
    nats_server: NatsServer, postgres: PostgresServer, unique: str
) -> AsyncIterator[Pair]:
    stream = f"sync-{unique}"
    async with AsyncExitStack() as stack:
        a, b = await start_pair(
            stack, postgres, unique=unique, stream=stream, nats_url=nats_server.url
        )
        nc = await nats.connect(nats_server.url)
        stack.push_async_callback(nc.close)
        yield Pair(a, b, stream, nc.jetstream())
