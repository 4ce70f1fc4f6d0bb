"""Provisioner settings: environment variables (the same names the services read)
overridden by command-line flags, turned into one :class:`BridgeConfig` per app.

Environment (flags win):

========================  ==================================================
``NATS_URLS``/``NATS_URL``  comma-separated server URLs (default nats://127.0.0.1:4222)
``NATS_USER``/``NATS_PASSWORD``  admin user (or ``NATS_TOKEN`` / ``NATS_CREDS``)
``STREAM_NAME``           stream (default ``sync-stream``)
``APPS``                  the two apps, comma-separated; else ``SYSTEM_A_NAME`` /
                          ``SYSTEM_B_NAME`` (default ``system_a`` / ``system_b``)
``CONSUMER_MODE``         pull|push for both; ``CONSUMER_MODE_<APP>`` per app
``MAX_DELIVER``, ``ACK_WAIT``, ``BACKOFF``  consumer settings ("30s", "1s,5s,15s")
``DLQ_RETENTION``         ``never`` (default: dead letters outlive max_age, the stream
                          allows per-message TTL) or ``stream``
========================  ==================================================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bridge.config import BridgeConfig, Credentials
from bridge.env import configure_bidirectional, resolve_consumer_mode
from bridge.errors import ConfigError
from bridge.provisioning.specs import ConsumerSpec, StreamSpec, consumer_spec, stream_spec


@dataclass(frozen=True, slots=True)
class ProvisionerSettings:
    """Everything the provisioner needs; built once from env + flags."""

    nats_urls: tuple[str, ...]
    stream_name: str
    apps: tuple[str, str]
    consumer_modes: Mapping[str, str]
    options: Mapping[str, Any] = field(default_factory=dict)
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    creds_file: str | None = None

    @property
    def credentials(self) -> Credentials:
        """Admin credentials; validated when a command needs to connect."""
        return Credentials(
            user=self.user,
            password=self.password if self.user else None,
            token=self.token,
            creds_file=self.creds_file,
        )

    def app_configs(self) -> list[BridgeConfig]:
        """One restrictive-mode config per app (the apps' own view of the topology)."""
        first, second = self.apps
        return [
            configure_bidirectional(
                app,
                peer,
                "restrictive",
                consumer_mode=self.consumer_modes[app],
                env={},
                nats_urls=self.nats_urls,
                stream_name=self.stream_name,
                **self.options,
            )
            for app, peer in ((first, second), (second, first))
        ]

    def desired(self) -> tuple[StreamSpec, list[ConsumerSpec]]:
        """The stream (both directions, both DLQs) and both apps' consumers."""
        configs = self.app_configs()
        return stream_spec(configs[0]), [consumer_spec(c) for c in configs]

    def admin_config(self) -> BridgeConfig:
        """Config used only to open the admin connection."""
        return self.app_configs()[0].with_(credentials=self.credentials)


def _first(*values: str | None) -> str | None:
    for value in values:
        if value is not None and value.strip():
            return value.strip()
    return None


def _apps(flag: str | None, env: Mapping[str, str]) -> tuple[str, str]:
    listed = _first(flag, env.get("APPS"))
    if listed:
        names = [n.strip() for n in listed.split(",") if n.strip()]
    else:
        names = [
            _first(env.get("SYSTEM_A_NAME")) or "system_a",
            _first(env.get("SYSTEM_B_NAME")) or "system_b",
        ]
    if len(names) != 2 or names[0] == names[1]:
        raise ConfigError(f"APPS must name exactly two different apps, got {names}")
    return names[0], names[1]


def load_settings(
    env: Mapping[str, str],
    *,
    nats_urls: str | None = None,
    user: str | None = None,
    password: str | None = None,
    stream: str | None = None,
    apps: str | None = None,
    consumer_mode: str | None = None,
    consumer_mode_for: Sequence[str] = (),
    max_deliver: int | None = None,
    ack_wait: str | None = None,
    backoff: str | None = None,
    dlq_retention: str | None = None,
) -> ProvisionerSettings:
    """Merge flags over ``env``; raise :class:`ConfigError` for invalid values."""
    urls = _first(nats_urls, env.get("NATS_URLS"), env.get("NATS_URL")) or "nats://127.0.0.1:4222"
    pair = _apps(apps, env)
    per_app: dict[str, str] = {}
    for item in consumer_mode_for:
        app, sep, mode = item.partition("=")
        if not sep or app not in pair:
            raise ConfigError(f"--consumer-mode-for expects APP=pull|push for {pair}, got {item!r}")
        per_app[app] = mode
    # Per-app flag, then --consumer-mode, then CONSUMER_MODE_<APP>, then CONSUMER_MODE.
    modes = {
        app: resolve_consumer_mode(app, per_app.get(app) or consumer_mode, {})
        if (per_app.get(app) or consumer_mode)
        else resolve_consumer_mode(app, None, env)
        for app in pair
    }
    options: dict[str, Any] = {}
    raw_max = max_deliver if max_deliver is not None else _first(env.get("MAX_DELIVER"))
    if raw_max is not None:
        try:
            options["max_deliver"] = int(raw_max)
        except ValueError as exc:
            raise ConfigError(f"MAX_DELIVER must be an integer, got {raw_max!r}") from exc
    wait = _first(ack_wait, env.get("ACK_WAIT"))
    if wait is not None:
        options["ack_wait"] = wait
    steps = _first(backoff, env.get("BACKOFF"))
    if steps is not None:
        options["backoff"] = steps
    retention = _first(dlq_retention, env.get("DLQ_RETENTION"))
    if retention is not None:
        options["dlq_retention"] = retention.lower()
    settings = ProvisionerSettings(
        nats_urls=tuple(u.strip() for u in urls.split(",") if u.strip()),
        user=_first(user, env.get("NATS_USER")),
        password=_first(password, env.get("NATS_PASSWORD")),
        token=_first(env.get("NATS_TOKEN")),
        creds_file=_first(env.get("NATS_CREDS")),
        stream_name=_first(stream, env.get("STREAM_NAME")) or "sync-stream",
        apps=pair,
        consumer_modes=modes,
        options=options,
    )
    settings.app_configs()  # validate every value now, not halfway through a run
    return settings
