"""The configuration in force, as the console shows it: every option, secrets hidden.

:func:`config_rows` flattens a :class:`~bridge.config.BridgeConfig` (nested options
as ``relay.batch_size``, ``credentials.user``, ...) and anything else the console
adds (the database URL, its own options) into ``(name, text)`` rows, each text passed
through :func:`bridge.observability.logs.redact` — the one rule for what a credential
looks like, shared with the logs: a secret-named option (password, token, NKey seed,
creds file, secret) shows ``***`` when set, and a URL keeps no user information
(``nats://user:pw@host`` → ``nats://***@host``, also a token as the user part).  An
unset option shows an en dash (:data:`UNSET`).  Nothing here reads a file: a creds
file's contents never reach the page.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from bridge.observability.logs import redact

#: What the page shows for a value that is not set or not known (an en dash).
UNSET = "\N{EN DASH}"


def _text(value: Any) -> str:
    if isinstance(value, bool | int | float | str):
        return str(value)
    if isinstance(value, frozenset | set):
        return ", ".join(sorted(str(v) for v in value))
    if isinstance(value, tuple | list):
        return ", ".join(_text(v) for v in value)
    if callable(value):
        name = getattr(value, "__qualname__", None) or type(value).__qualname__
        return f"{getattr(value, '__module__', '?')}.{name}"
    return repr(value)


def _rows(prefix: str, obj: Any) -> Iterable[tuple[str, Any]]:
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        name = f"{prefix}{field.name}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            yield from _rows(f"{name}.", value)
        else:
            yield name, value


def shown(name: str, value: Any) -> str:
    """One option's value as the page shows it (module doc)."""
    if value is None:
        return UNSET
    key = name.rsplit(".", 1)[-1]
    return str(redact(_text(value), key))


def config_rows(
    *objects: tuple[str, Any], extra: Mapping[str, Any] | None = None
) -> list[tuple[str, str]]:
    """``(name, shown value)`` of every field of each ``(prefix, dataclass)`` in
    ``objects``, then of ``extra``."""
    rows: list[tuple[str, str]] = []
    for prefix, obj in objects:
        rows += [(name, shown(name, value)) for name, value in _rows(prefix, obj)]
    rows += [(name, shown(name, value)) for name, value in (extra or {}).items()]
    return rows
