"""The environment: the one reader of the variables that configure the bridge, and
env files.

:func:`config_from_env` is how every process of an app — the services and their
workers (``services/shared/settings.py`` passes the environment on), the ``bridge``
command, ``bridge-provision`` — turns its environment into a
:class:`~bridge.config.BridgeConfig`, so they cannot disagree:

=======================================  ==================================================
``APP_NAME``, ``DESTINATION_APP``        this side and the other side (required)
``NATS_URLS`` / ``NATS_URL``             servers, comma-separated (nats://127.0.0.1:4222)
``NATS_USER`` + ``NATS_PASSWORD``,       credentials (one method), reply-inbox prefix
``NATS_TOKEN``, ``NATS_CREDS``,
``NATS_INBOX_PREFIX``
``STREAM_NAME``                          stream (sync-stream)
``MODE``                                 non_restrictive | restrictive (verify only)
``CONSUMER_MODE_<APP>``, ``CONSUMER_MODE``  pull | push, in that order (pull)
``MAX_DELIVER``, ``ACK_WAIT``, ``BACKOFF``  handler attempts, ack window, NAK delays
``RECONCILE_INTERVAL``                   periodic anti-entropy ("1h"; unset: off)
``DLQ_RETENTION``                        never | stream
``MAX_CLOCK_SKEW``, ``KNOWN_ORIGINS``    bounds on incoming versions and origins
``ENABLE_CONSUMER``, ``ENABLE_RELAY``    true | false: run that part in this process
=======================================  ==================================================

:func:`configure_bidirectional` (the gem's one call) reads only the consumer mode.
``DATABASE_URL`` is returned beside the config (:func:`database_url_from_env`), and
``BRIDGE_MODELS`` (the module declaring the synced models) by
:func:`models_module_from_env`, and ``BRIDGE_CONSOLE_TOKEN`` (the operator token of
the console) by :func:`console_token_from_env`.  The mapping is always passed in; only
:func:`configure_bidirectional` defaults to ``os.environ``.

**Env files** (:func:`write_env_file`, :func:`read_env_file`) hold such a mapping:
``make up`` writes one per app under ``.devstack/`` and ``bridge --env-file PATH``
reads it — the same names, so the file that describes an app configures the CLI.
Format: ``NAME=value`` lines, ``#`` comments, blank lines, an optional ``export``
prefix, a value optionally in single quotes (taken literally) or double quotes
(a backslash escapes a backslash, a double quote, ``$`` or a backtick); no inline
comments, no multi-line values.  What :func:`write_env_file` writes is also what a
POSIX shell reads (``set -a; . FILE``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, cast

from bridge.config import (
    CONSUMER_MODES,
    BridgeConfig,
    ConsumerMode,
    Credentials,
    Mode,
    ReconcileOptions,
)
from bridge.errors import ConfigError


def resolve_consumer_mode(
    app_name: str, explicit: str | None, env: Mapping[str, str]
) -> ConsumerMode:
    """Explicit override, then ``CONSUMER_MODE_<APP>``, then ``CONSUMER_MODE``, then pull."""
    for value in (
        explicit,
        env.get(f"CONSUMER_MODE_{app_name.upper()}"),
        env.get("CONSUMER_MODE"),
    ):
        if value:
            mode = value.strip().lower()
            if mode not in CONSUMER_MODES:
                raise ConfigError(f"consumer mode must be 'pull' or 'push', got {value!r}")
            return mode  # type: ignore[return-value]
    return "pull"


def configure_bidirectional(
    app_name: str,
    destination_app: str,
    mode: Mode = "non_restrictive",
    *,
    consumer_mode: str | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> BridgeConfig:
    """One call for one side of a pair, like the gem's ``configure_bidirectional``.

    ``mode="restrictive"`` turns ``auto_provision`` off (apps only verify).  The
    consumer mode comes from ``consumer_mode``, then ``CONSUMER_MODE_<APP>``, then
    ``CONSUMER_MODE`` in ``env`` (default: ``os.environ``), then pull.
    """
    if mode not in ("non_restrictive", "restrictive"):
        raise ConfigError(f"mode must be 'non_restrictive' or 'restrictive', got {mode!r}")
    environ = os.environ if env is None else env
    known = {f.name for f in fields(BridgeConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown option(s): {', '.join(unknown)}")
    values: dict[str, Any] = {
        "auto_provision": mode == "non_restrictive",
        "consumer_mode": resolve_consumer_mode(app_name, consumer_mode, environ),
    }
    values.update(overrides)
    return BridgeConfig(app_name=app_name, destination_app=destination_app, **values)


#: ``ENABLE_*`` and other switches: what counts as on and off (any case).
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def config_from_env(
    env: Mapping[str, str],
    *,
    mode: Mode | None = None,
    consumer_mode: str | None = None,
    **overrides: Any,
) -> BridgeConfig:
    """The config of one app's processes from ``env`` (module doc lists the variables).

    ``overrides`` are :class:`~bridge.config.BridgeConfig` options and win over the
    environment (``app_name`` and ``destination_app`` included, for a service whose
    name is its default); ``mode`` and ``consumer_mode`` win over ``MODE`` and the
    ``CONSUMER_MODE`` variables.  A bad value raises :class:`ConfigError` naming its
    variable.
    """
    app = overrides.pop("app_name", None) or env.get("APP_NAME")
    peer = overrides.pop("destination_app", None) or env.get("DESTINATION_APP")
    if not app or not peer:
        raise ConfigError("set APP_NAME and DESTINATION_APP (e.g. system_a / system_b)")
    urls = env.get("NATS_URLS") or env.get("NATS_URL") or "nats://127.0.0.1:4222"
    values: dict[str, Any] = {
        "nats_urls": tuple(u.strip() for u in urls.split(",") if u.strip()),
        "stream_name": env.get("STREAM_NAME") or "sync-stream",
    }
    if "credentials" not in overrides:  # given: the NATS_* credentials are not read
        values["credentials"] = Credentials(
            user=env.get("NATS_USER") or None,
            password=env.get("NATS_PASSWORD") or None,
            token=env.get("NATS_TOKEN") or None,
            creds_file=env.get("NATS_CREDS") or None,
            inbox_prefix=env.get("NATS_INBOX_PREFIX") or None,
        )
    if env.get("MAX_DELIVER"):
        try:
            values["max_deliver"] = int(env["MAX_DELIVER"])
        except ValueError as exc:
            raise ConfigError(
                f"MAX_DELIVER must be an integer, got {env['MAX_DELIVER']!r}"
            ) from exc
    for name, option in (
        ("ACK_WAIT", "ack_wait"),
        ("BACKOFF", "backoff"),
        ("MAX_CLOCK_SKEW", "max_clock_skew"),
        ("KNOWN_ORIGINS", "known_origins"),
    ):
        if env.get(name):
            values[option] = env[name]
    if env.get("RECONCILE_INTERVAL"):
        values["reconcile"] = ReconcileOptions(interval=env["RECONCILE_INTERVAL"])
    if env.get("DLQ_RETENTION"):
        values["dlq_retention"] = env["DLQ_RETENTION"].strip().lower()
    for name, option in (("ENABLE_CONSUMER", "enable_consumer"), ("ENABLE_RELAY", "enable_relay")):
        if env.get(name):
            values[option] = _switch(env[name], name)
    values.update(overrides)
    chosen = mode or env.get("MODE") or "non_restrictive"
    if chosen not in ("non_restrictive", "restrictive"):
        raise ConfigError(f"MODE must be non_restrictive or restrictive, got {chosen!r}")
    return configure_bidirectional(
        app, peer, cast("Mode", chosen), consumer_mode=consumer_mode, env=env, **values
    )


def _switch(value: str, name: str) -> bool:
    text = value.strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise ConfigError(f"{name} must be true or false, got {value!r}")


def database_url_from_env(env: Mapping[str, str]) -> str:
    url = env.get("DATABASE_URL")
    if not url:
        raise ConfigError("set DATABASE_URL (postgresql+asyncpg://user@host:5432/db)")
    return url


def models_module_from_env(env: Mapping[str, str]) -> str:
    """``BRIDGE_MODELS``: the module declaring the app's synced models ("" if unset)."""
    return env.get("BRIDGE_MODELS", "")


def console_token_from_env(env: Mapping[str, str]) -> str | None:
    """``BRIDGE_CONSOLE_TOKEN``: the operator token of the console
    (:mod:`bridge.integrations.console`); ``None`` when unset (the console is read-only)."""
    return env.get("BRIDGE_CONSOLE_TOKEN") or None


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# Characters a shell takes literally in an unquoted word.
_PLAIN = re.compile(r"[A-Za-z0-9_@%+=:,./-]*\Z")
_DOUBLE_ESCAPES = re.compile(r'\\([\\"$`])')


def _quote(value: str) -> str:
    if _PLAIN.match(value):
        return value
    if "'" not in value:
        return f"'{value}'"
    escaped = re.sub(r'([\\"$`])', r"\\\1", value)
    return f'"{escaped}"'


def _unquote(value: str, where: str) -> str:
    if value[:1] in ("'", '"'):
        quote = value[0]
        if len(value) < 2 or value[-1] != quote:
            raise ConfigError(f"{where}: unterminated {quote} quote")
        inner = value[1:-1]
        return inner if quote == "'" else _DOUBLE_ESCAPES.sub(r"\1", inner)
    return value


def read_env_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``NAME=value`` pairs of an env file (format in the module doc).

    Raises :class:`ConfigError` naming the file (and the line) when it cannot be
    read or a line is not ``NAME=value``: a half-read file would configure the
    wrong thing silently.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"env file {os.fspath(path)}: {exc.__class__.__name__}: {exc}") from exc
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{os.fspath(path)}:{number}"
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or not _NAME.match(name):
            raise ConfigError(f"{where}: expected NAME=value, got {raw.strip()[:60]!r}")
        values[name] = _unquote(value.strip(), where)
    return values


def write_env_file(path: str | os.PathLike[str], values: Mapping[str, str]) -> Path:
    """Write ``values`` as an env file only its owner can read (it may hold passwords)."""
    for name, value in values.items():
        if not _NAME.match(name):
            raise ConfigError(f"env file {os.fspath(path)}: invalid variable name {name!r}")
        if "\n" in str(value) or "\r" in str(value):
            raise ConfigError(f"env file {os.fspath(path)}: {name} holds a line break")
    target = Path(path)
    text = "".join(f"{name}={_quote(str(value))}\n" for name, value in values.items())
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    target.chmod(0o600)  # an existing file keeps its mode through O_CREAT
    return target


def with_env_files(
    environ: Mapping[str, str], paths: Sequence[str | os.PathLike[str]]
) -> Mapping[str, str]:
    """``environ`` overlaid with the env files at ``paths`` (a later file wins).

    The files win over ``environ``: a file is named on purpose, while a shell may
    still export variables of some other system.
    """
    if not paths:
        return environ
    merged = dict(environ)
    for path in paths:
        merged.update(read_env_file(path))
    return merged
