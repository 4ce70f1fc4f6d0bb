"""Build a :class:`BridgeConfig` from environment variables — for command-line
tools and worker processes, which have no settings class of their own.

The names are the ones the services read (``services/shared/settings.py``):
``APP_NAME``, ``DESTINATION_APP``, ``NATS_URLS``/``NATS_URL``, ``NATS_USER``/
``NATS_PASSWORD``, ``NATS_TOKEN``, ``NATS_CREDS``, ``NATS_INBOX_PREFIX``,
``STREAM_NAME``, ``MODE``, ``CONSUMER_MODE`` (and ``CONSUMER_MODE_<APP>``),
``MAX_DELIVER``, ``ACK_WAIT``, ``BACKOFF``, ``RECONCILE_INTERVAL``; ``DATABASE_URL``
is returned beside the config, ``BRIDGE_MODELS`` (the module declaring the synced
models) by :func:`models_module_from_env`.  The mapping is passed in: nothing reads
``os.environ`` implicitly.  ``DLQ_RETENTION`` sets ``dlq_retention``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bridge.config import BridgeConfig, Credentials, ReconcileOptions, configure_bidirectional
from bridge.errors import ConfigError


def config_from_env(env: Mapping[str, str], **overrides: Any) -> BridgeConfig:
    """The config one app's processes use, from ``env`` (``overrides`` win)."""
    app = env.get("APP_NAME")
    peer = env.get("DESTINATION_APP")
    if not app or not peer:
        raise ConfigError("set APP_NAME and DESTINATION_APP (e.g. system_a / system_b)")
    urls = env.get("NATS_URLS") or env.get("NATS_URL") or "nats://127.0.0.1:4222"
    values: dict[str, Any] = {
        "nats_urls": tuple(u.strip() for u in urls.split(",") if u.strip()),
        "stream_name": env.get("STREAM_NAME") or "sync-stream",
        "credentials": Credentials(
            user=env.get("NATS_USER") or None,
            password=env.get("NATS_PASSWORD") or None,
            token=env.get("NATS_TOKEN") or None,
            creds_file=env.get("NATS_CREDS") or None,
            inbox_prefix=env.get("NATS_INBOX_PREFIX") or None,
        ),
    }
    if env.get("MAX_DELIVER"):
        try:
            values["max_deliver"] = int(env["MAX_DELIVER"])
        except ValueError as exc:
            raise ConfigError(
                f"MAX_DELIVER must be an integer, got {env['MAX_DELIVER']!r}"
            ) from exc
    if env.get("ACK_WAIT"):
        values["ack_wait"] = env["ACK_WAIT"]
    if env.get("BACKOFF"):
        values["backoff"] = env["BACKOFF"]
    if env.get("RECONCILE_INTERVAL"):
        values["reconcile"] = ReconcileOptions(interval=env["RECONCILE_INTERVAL"])
    if env.get("DLQ_RETENTION"):
        values["dlq_retention"] = env["DLQ_RETENTION"].strip().lower()
    values.update(overrides)
    mode = env.get("MODE") or "non_restrictive"
    if mode not in ("non_restrictive", "restrictive"):
        raise ConfigError(f"MODE must be non_restrictive or restrictive, got {mode!r}")
    return configure_bidirectional(app, peer, mode, env=env, **values)  # type: ignore[arg-type]


def database_url_from_env(env: Mapping[str, str]) -> str:
    url = env.get("DATABASE_URL")
    if not url:
        raise ConfigError("set DATABASE_URL (postgresql+asyncpg://user@host:5432/db)")
    return url


def models_module_from_env(env: Mapping[str, str]) -> str:
    """``BRIDGE_MODELS``: the module declaring the app's synced models ("" if unset)."""
    return env.get("BRIDGE_MODELS", "")
