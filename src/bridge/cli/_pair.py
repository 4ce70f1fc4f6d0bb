"""Provisioner settings: the apps' environment variables, read by the apps' own reader
(:func:`bridge.env.config_from_env`), overridden by command-line flags — one
:class:`BridgeConfig` per app.

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

from bridge.config import BridgeConfig, Credentials
from bridge.env import config_from_env
from bridge.errors import ConfigError
from bridge.provisioning.specs import ConsumerSpec, StreamSpec, consumer_spec, stream_spec


@dataclass(frozen=True, slots=True)
class ProvisionerSettings:
    """Everything the provisioner needs: the environment with the flags applied, read
    per app by :func:`bridge.env.config_from_env` (the apps' own reader)."""

    env: Mapping[str, str] = field(repr=False)  # may hold the admin's password
    apps: tuple[str, str]
    #: A consumer mode given by a flag, per app (it wins over CONSUMER_MODE_<APP>).
    consumer_modes: Mapping[str, str] = field(default_factory=dict)

    def app_configs(self, *, admin: bool = False) -> list[BridgeConfig]:
        """One restrictive-mode config per app (the apps' own view of the topology);
        with ``admin``, the environment's (the admin's) credentials, checked."""
        first, second = self.apps
        credentials = {} if admin else {"credentials": Credentials()}
        return [
            config_from_env(
                self.env,
                app_name=app,
                destination_app=peer,
                mode="restrictive",
                consumer_mode=self.consumer_modes.get(app),
                **credentials,
            )
            for app, peer in ((first, second), (second, first))
        ]

    def desired(self) -> tuple[StreamSpec, list[ConsumerSpec]]:
        """The stream (both directions, both DLQs) and both apps' consumers."""
        configs = self.app_configs()
        return stream_spec(configs[0]), [consumer_spec(c) for c in configs]

    def admin_config(self) -> BridgeConfig:
        """Config used only to open the admin connection."""
        return self.app_configs(admin=True)[0]


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
    """Apply the flags over ``env``; raise :class:`ConfigError` for invalid values."""
    pair = _apps(apps, env)
    per_app: dict[str, str] = {}
    for item in consumer_mode_for:
        app, sep, mode = item.partition("=")
        if not sep or app not in pair:
            raise ConfigError(f"--consumer-mode-for expects APP=pull|push for {pair}, got {item!r}")
        per_app[app] = mode
    # Per-app flag, then --consumer-mode, then CONSUMER_MODE_<APP>, then CONSUMER_MODE.
    modes: dict[str, str] = {}
    for app in pair:
        chosen = per_app.get(app) or consumer_mode
        if chosen:
            modes[app] = chosen
    flags = {
        "NATS_URLS": nats_urls,
        "NATS_USER": user,
        "NATS_PASSWORD": password,
        "STREAM_NAME": stream,
        "MAX_DELIVER": None if max_deliver is None else str(max_deliver),
        "ACK_WAIT": ack_wait,
        "BACKOFF": backoff,
        "DLQ_RETENTION": dlq_retention,
    }
    merged = {**env, **{name: value for name, value in flags.items() if value is not None}}
    settings = ProvisionerSettings(env=merged, apps=pair, consumer_modes=modes)
    settings.app_configs()  # validate every value now, not halfway through a run
    return settings
