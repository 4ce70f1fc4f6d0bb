"""Service settings: the service edge's own, and the bridge's through the one reader.

``ServiceSettings`` (pydantic-settings) holds what only the service needs: its name
and peer (``APP_NAME``, ``DESTINATION_APP``; System A and B set the defaults),
``DATABASE_URL``, ``HOST``, ``PORT``, ``SYNC_ENABLED``, ``DB_POOL_SIZE``,
``METRICS_PORT`` and ``LOG_LEVEL``.  Everything the bridge reads — NATS servers and
credentials, ``MODE``, ``CONSUMER_MODE``, ``STREAM_NAME``, ``MAX_DELIVER``,
``ENABLE_CONSUMER`` ... — is read by :func:`bridge.env.config_from_env`, the reader the
``bridge`` CLI and the provisioner use too (:meth:`ServiceSettings.to_bridge_config`),
so a service, its workers and the CLI run with one config.  Secrets never pass
through this class.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from bridge import BridgeConfig, config_from_env


class ServiceSettings(BaseSettings):
    """One service's settings.  Subclasses set the defaults of System A and System B."""

    model_config = SettingsConfigDict(env_prefix="", extra="forbid", frozen=True)

    app_name: str = "system_a"
    destination_app: str = "system_b"
    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/system_a"
    host: str = "127.0.0.1"
    port: int = Field(default=3000, ge=1, le=65535)
    #: Run the bridge (relay + consumer).  Off: the API works on its own database only.
    sync_enabled: bool = True
    db_pool_size: int = 10
    #: Worker processes: serve /metrics, /health and /sync_status on this port (0: any free
    #: port; unset: no HTTP at all).  The web app serves them on ``port`` anyway.
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    log_level: str = "INFO"

    def to_bridge_config(
        self, env: Mapping[str, str] | None = None, **overrides: Any
    ) -> BridgeConfig:
        """The bridge config of this service: ``env`` (default: the process environment)
        read by :func:`bridge.env.config_from_env`, with this service's name and peer
        and ``overrides`` (:class:`~bridge.config.BridgeConfig` options) winning."""
        return config_from_env(
            os.environ if env is None else env,
            **{"app_name": self.app_name, "destination_app": self.destination_app, **overrides},
        )
