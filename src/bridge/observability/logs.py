"""Structured logging: one JSON object per line when asked, readable text by default.

Library modules log with ``logging.getLogger("bridge.<part>")`` and put fields in
``extra={...}`` (event_id, subject, stream_seq, attempt ...).  The formatters here
render those fields and redact anything that looks like a credential — by key
(password, token, seed, secret, creds, authorization) and inside URLs
(``nats://user:pw@host`` → ``nats://***@host``) — so a log line never carries one.
Nothing is configured at import time; applications call :func:`configure_logging`.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
_SECRET_KEY = re.compile(r"pass(word)?|token|seed|secret|creds|authorization|api_key", re.I)
_URL_USERINFO = re.compile(r"([a-z][a-z0-9+.-]*://)[^/@\s]+@", re.I)
REDACTED = "***"


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


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message", ...extra fields}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        body.update(record_fields(record))
        if record.exc_info:
            body["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(body, default=str)


class TextFormatter(logging.Formatter):
    """``time level logger message key=value ...`` for people at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in record_fields(record).items())
        line = (
            f"{self.formatTime(record)} {record.levelname:<7} {record.name}: "
            f"{redact(record.getMessage())}"
        )
        if fields:
            line = f"{line} {fields}"
        if record.exc_info:
            line = f"{line}\n{redact(self.formatException(record.exc_info))}"
        return line


def configure_logging(*, json_lines: bool = False, level: str | int = "INFO") -> None:
    """Install one stream handler on the root logger with the chosen formatter."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level if isinstance(level, int) else level.upper())
