"""What a running service holds (built in the lifespan, kept in ``app.state.service``)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.shared.repository import Repository

if TYPE_CHECKING:
    from bridge import Bridge

DB_CHECK_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class ServiceState:
    """The engine, the session factory API writes use, and the bridge (``None``: sync off)."""

    app_name: str
    engine: AsyncEngine
    session_factory: async_sessionmaker[AsyncSession]
    repository: Repository
    bridge: Bridge | None

    async def health(self) -> dict[str, Any]:
        """``/health`` with sync off: ``status`` ok|degraded and the database; no secrets.

        With sync on the library's router answers from the bridge
        (:mod:`services.shared.status`)."""
        database: dict[str, Any] = {"connected": True, "error": None}
        try:
            async with asyncio.timeout(DB_CHECK_TIMEOUT), self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:  # reported in the body; health must not raise
            database = {"connected": False, "error": f"{type(exc).__name__}: {exc}"}
        return {
            "status": "ok" if database["connected"] else "degraded",
            "app": self.app_name,
            "database": database,
            "nats": {"enabled": False, "connected": False},
        }
