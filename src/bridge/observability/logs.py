"""Structured logging: one record per line — a JSON object, or ``key=value`` text for
people at a terminal.

Library modules log with ``logging.getLogger("bridge.<part>")`` and put fields in
``extra={...}`` (event_id, subject, deliveries, stream_seq, error_type ...).  The
formatters here render those fields and redact anything that looks like a credential —
by key (password, token, seed, secret, creds, authorization) and inside URLs
(``nats://user:pw@host`` → ``nats://***@host``) — so a log line never carries one.

A record with an exception (``exc_info``) gets ``error_type``, ``error`` (its message)
and ``traceback``; the text format escapes the traceback's line breaks, so a record
is always one line whatever it holds.

Nothing is configured at import time.  :func:`configure_logging` installs the handler;
:func:`ensure_logging` does so only when the application has configured nothing (the
root logger has no handler) — what :func:`~bridge.integrations.lifespan.bridge_lifespan`
and the ``bridge`` / ``bridge-provision`` commands call by default, so a user who never
heard of this module still gets the fields instead of Python's bare last-resort output.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
_SECRET_KEY = re.compile(r"pass(word)?|token|seed|secret|creds|authorization|api_key", re.I)
_URL_USERINFO = re.compile(r"([a-z][a-z0-9+.-]*://)[^/@\s]+@", re.I)
_BARE = re.compile(r"[^\s\"'=\\]+")
REDACTED = "***"
#: Marks the handler :func:`configure_logging` installs (it replaces only its own).
HANDLER_NAME = "bridge"


def redact(value: Any, key: str | None = None) -> Any:
    """Return ``value`` with credentials replaced by ``***`` (recursively)."""
    if key is not None and _SECRET_KEY.search(key):
        return REDACTED
    if isinstance(value, str):
        return _URL_USERINFO.sub(r"\1***@", value)
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra`` fields of a record, redacted."""
    return {
        k: redact(v, k)
        for k, v in record.__dict__.items()
        if k not in _STANDARD and not k.startswith("_")
    }


def _exception_fields(formatter: logging.Formatter, record: logging.LogRecord) -> dict[str, Any]:
    """``error_type``, ``error`` and ``traceback`` of a record's ``exc_info`` (the
    record's own ``error_type``/``error`` fields win)."""
    if not record.exc_info or record.exc_info[1] is None:
        return {}
    exc = record.exc_info[1]
    return {
        "error_type": type(exc).__name__,
        "error": redact(str(exc)),
        "traceback": redact(formatter.formatException(record.exc_info)),
    }


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message", ...extra fields}`` on one line; with an
    exception also ``error_type``, ``error`` and ``traceback``."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        body.update(_exception_fields(self, record))
        body.update(record_fields(record))
        return json.dumps(body, default=str)


def _text_value(value: Any) -> str:
    """A field value as one token: bare when it is one, else a JSON string (quoted,
    line breaks escaped)."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if _BARE.fullmatch(text) else json.dumps(text)


class TextFormatter(logging.Formatter):
    """``time level logger: message key=value ...`` on one line, for people at a
    terminal; values with spaces are quoted, a traceback's line breaks escaped."""

    def format(self, record: logging.LogRecord) -> str:
        fields = {**_exception_fields(self, record), **record_fields(record)}
        line = (
            f"{self.formatTime(record)} {record.levelname:<7} {record.name}: "
            f"{redact(record.getMessage())}"
        )
        if fields:
            line += " " + " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
        return line


def configure_logging(*, json_lines: bool = False, level: str | int = "INFO") -> None:
    """Install one stream handler (stderr) on the root logger with the chosen formatter,
    replacing the handler a previous call installed (and any other root handler)."""
    handler = logging.StreamHandler()
    handler.set_name(HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level if isinstance(level, int) else level.upper())


def ensure_logging(*, json_lines: bool | None = None, level: str | int = "INFO") -> bool:
    """:func:`configure_logging`, unless the application configured logging already
    (the root logger has a handler): then nothing changes.  Returns whether it
    configured.  ``json_lines=None`` chooses by the output: text on a terminal, JSON
    lines otherwise (a process manager, a container, a file)."""
    if logging.getLogger().handlers:
        return False
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    configure_logging(json_lines=json_lines, level=level)
    return True
