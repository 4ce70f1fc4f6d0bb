"""Service settings: the service edge's own, and the bridge's through the one reader.

``ServiceSettings`` (pydantic-settings) holds what only the service needs: its name
and peer (``APP_NAME``, ``DESTINATION_APP``; System A and B set the defaults),
``DATABASE_URL``, ``HOST``, ``PORT``, ``SYNC_ENABLED``, ``DB_POOL_SIZE``,
``METRICS_PORT``, ``LOG_LEVEL`` and ``ID_SYSTEM_NUMBER`` (the number in the ids this
system's database issues, :mod:`bridge.ids`: unique among the synced databases;
System A is 1 and System B 2 unless set).  Everything the bridge reads — NATS servers and
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
from bridge.errors import ConfigError
from bridge.ids import MAX_SYSTEM

#: The system numbers of the two example apps when ``ID_SYSTEM_NUMBER`` is unset.
DEFAULT_SYSTEM_NUMBERS = {"system_a": 1, "system_b": 2}


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
    #: The id generator's system number for this app's database (0..63); unset: the
    #: example apps' own (:data:`DEFAULT_SYSTEM_NUMBERS`), any other app must set it.
    id_system_number: int | None = Field(default=None, ge=0, le=MAX_SYSTEM)

    def system_number(self) -> int:
        """``ID_SYSTEM_NUMBER``, or the default of this app; :class:`ConfigError` when an
        app that is not one of the examples has none."""
        if self.id_system_number is not None:
            return self.id_system_number
        try:
            return DEFAULT_SYSTEM_NUMBERS[self.app_name]
        except KeyError:
            raise ConfigError(
                f"ID_SYSTEM_NUMBER is not set for app {self.app_name!r}: give every synced "
                f"database its own number in 0..{MAX_SYSTEM} (docs/IDENTITIES.md)"
            ) from None

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
