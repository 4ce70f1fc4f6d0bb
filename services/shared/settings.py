"""Service settings from the environment — the ONLY place the services read env.

``ServiceSettings`` reads ``APP_NAME``, ``DESTINATION_APP``, ``DATABASE_URL``,
``NATS_URL`` / ``NATS_URLS``, ``NATS_USER`` / ``NATS_PASSWORD`` / ``NATS_TOKEN`` /
``NATS_CREDS`` / ``NATS_INBOX_PREFIX``, ``MODE`` (non_restrictive|restrictive),
``CONSUMER_MODE`` (and ``CONSUMER_MODE_<APP>``), ``STREAM_NAME``, ``PORT``,
``RECONCILE_INTERVAL``, ``MAX_CLOCK_SKEW``, ``KNOWN_ORIGINS`` and a few
tuning knobs, then :meth:`ServiceSettings.to_bridge_config` builds the library's
frozen config with :func:`bridge.env.configure_bidirectional`.  Secrets are
``SecretStr`` so a logged settings object shows ``**********``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from bridge.config import BridgeConfig, Credentials, ReconcileOptions
from bridge.env import configure_bidirectional


class ServiceSettings(BaseSettings):
    """One service's settings.  Subclasses set the defaults of System A and System B."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True)

    app_name: str = "system_a"
    destination_app: str = "system_b"
    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/system_a"
    nats_url: str | None = None
    nats_urls: str | None = None
    nats_user: str | None = None
    nats_password: SecretStr | None = None
    nats_token: SecretStr | None = None
    nats_creds: str | None = None
    nats_inbox_prefix: str | None = None
    mode: Literal["non_restrictive", "restrictive"] = "non_restrictive"
    consumer_mode: Literal["pull", "push"] | None = None
    stream_name: str = "sync-stream"
    host: str = "127.0.0.1"
    port: int = Field(default=3000, ge=1, le=65535)
    #: Run the bridge (relay + consumer).  Off: the API works on its own database only.
    sync_enabled: bool = True
    enable_consumer: bool = True
    enable_relay: bool = True
    max_deliver: int | None = None
    ack_wait: str | None = None
    backoff: str | None = None
    #: Seconds (or "10m") between anti-entropy passes; unset or 0 = off.
    reconcile_interval: str | None = None
    #: An incoming version more than this ahead of the clock is dead-lettered ("5m").
    max_clock_skew: str | None = None
    #: Systems besides this app and its peer whose changes apply (comma-separated).
    known_origins: str | None = None
    db_pool_size: int = 10
    #: Worker processes: serve /metrics, /health and /sync_status on this port (0: any free
    #: port; unset: no HTTP at all).  The web app serves them on ``port`` anyway.
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    log_level: str = "INFO"

    def urls(self) -> tuple[str, ...]:
        raw = self.nats_urls or self.nats_url or "nats://127.0.0.1:4222"
        return tuple(u.strip() for u in raw.split(",") if u.strip())

    def credentials(self) -> Credentials:
        return Credentials(
            user=self.nats_user or None,
            password=self.nats_password.get_secret_value() if self.nats_password else None,
            token=self.nats_token.get_secret_value() if self.nats_token else None,
            creds_file=self.nats_creds or None,
            inbox_prefix=self.nats_inbox_prefix or None,
        )

    def to_bridge_config(
        self, env: Mapping[str, str] | None = None, **overrides: Any
    ) -> BridgeConfig:
        """The bridge config for this service (``overrides`` win; used by tests).

        ``env`` is where ``CONSUMER_MODE_<APP>`` is looked up when ``CONSUMER_MODE``
        is not set explicitly (default: the process environment).
        """
        values: dict[str, Any] = {
            "nats_urls": self.urls(),
            "stream_name": self.stream_name,
            "credentials": self.credentials(),
            "enable_consumer": self.enable_consumer,
            "enable_relay": self.enable_relay,
        }
        if self.max_deliver is not None:
            values["max_deliver"] = self.max_deliver
        if self.ack_wait:
            values["ack_wait"] = self.ack_wait
        if self.backoff:
            values["backoff"] = self.backoff
        if self.reconcile_interval:
            values["reconcile"] = ReconcileOptions(interval=self.reconcile_interval)
        if self.max_clock_skew:
            values["max_clock_skew"] = self.max_clock_skew
        if self.known_origins:
            values["known_origins"] = self.known_origins
        values.update(overrides)
        return configure_bidirectional(
            self.app_name,
            self.destination_app,
            self.mode,
            consumer_mode=self.consumer_mode,
            env=os.environ if env is None else env,
            **values,
        )
