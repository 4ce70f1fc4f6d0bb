"""Fixtures for the id generator's tests: a fresh database with the generator installed
(system number 1), an engine and a plain asyncpg connection to it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from ids_support import SERVER_SETTINGS, connect, install_with_system
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


@pytest.fixture
async def ids_url(database_url: str) -> str:
    """A database with the generator installed, system number 1."""
    await install_with_system(database_url, 1)
    return database_url


@pytest.fixture
async def ids_engine(ids_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(ids_url, connect_args={"server_settings": SERVER_SETTINGS})
    yield engine
    await engine.dispose()


@pytest.fixture
async def raw(ids_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(ids_url)
    yield conn
    await conn.close()
