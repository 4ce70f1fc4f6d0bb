"""Helpers of the id generator's tests (fixtures in conftest.py)."""

from __future__ import annotations

import asyncpg
from sqlalchemy.ext.asyncio import create_async_engine

from bridge import ids
from bridge.testing.servers import to_plain_url

#: A generator that leaked its lock would make the next caller wait forever: in these
#: tests a wait for a lock fails instead, so such a bug is an error, not a hang.
SERVER_SETTINGS = {"lock_timeout": "20s"}


async def install_with_system(url: str, system: int) -> None:
    """Install the generator in the database at ``url`` with system number ``system``."""
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await ids.install(conn)
            await ids.set_system_number(conn, system)
    finally:
        await engine.dispose()


async def connect(url: str) -> asyncpg.Connection:
    """A plain asyncpg connection (SQLSTATEs as the server sent them)."""
    return await asyncpg.connect(to_plain_url(url), server_settings=SERVER_SETTINGS)
