"""System A's ASGI entry point: ``uvicorn services.system_a.main:app --port 3000``.

Importing this module builds the settings (reads the environment) and the app
object only; nothing connects until the server runs the app's lifespan.
"""

from __future__ import annotations

from fastapi import FastAPI
from pydantic_settings import SettingsConfigDict

from bridge import BridgeConfig
from services.shared.app import create_app
from services.shared.settings import ServiceSettings


class SystemASettings(ServiceSettings):
    """Defaults of System A; every field can be overridden by its environment variable."""

    model_config = SettingsConfigDict(env_prefix="", extra="forbid", frozen=True)

    app_name: str = "system_a"
    destination_app: str = "system_b"
    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/system_a"
    port: int = 3000
    id_system_number: int | None = 1


def build_app(
    settings: ServiceSettings | None = None, *, bridge_config: BridgeConfig | None = None
) -> FastAPI:
    """A fresh System A app (tests build several in one process);
    ``bridge_config`` replaces the one read from the environment."""
    return create_app(settings or SystemASettings(), bridge_config=bridge_config)


app = build_app()
