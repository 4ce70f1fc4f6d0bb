"""Fixtures for the consumer-side tests (helpers live in consumer_support.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from consumer_support import Stack, build_stack, close_stack, make_config

from bridge.config import BridgeConfig
from bridge.testing import NatsServer


@pytest.fixture
def cfg(nats_server: NatsServer, unique: str) -> BridgeConfig:
    return make_config(nats_server.url, unique)


@pytest.fixture
async def stack(cfg: BridgeConfig, database_url: str) -> AsyncIterator[Stack]:
    s = await build_stack(cfg, database_url)
    yield s
    await close_stack(s)
