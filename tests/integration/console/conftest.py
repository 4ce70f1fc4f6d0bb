"""Fixtures of the console's router tests: ``stack`` = a bridge + its console (token set)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from console_support import ConsoleStack, console_stack

from bridge.testing import NatsServer


@pytest.fixture
async def stack(
    nats_server: NatsServer, database_url: str, unique: str
) -> AsyncIterator[ConsoleStack]:
    async with console_stack(nats_server.url, database_url, unique) as running:
        yield running
