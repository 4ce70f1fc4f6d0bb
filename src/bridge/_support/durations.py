"""Parse duration strings ("30s", "1.5m", "250ms", "2h") into float seconds, once."""

from __future__ import annotations

import re

from bridge.errors import ConfigError

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def parse_duration(value: str | float | int, *, name: str = "duration") -> float:
    """Return ``value`` in seconds.

    Numbers are seconds already.  Strings take an optional unit (ms, s, m, h;
    default s).  Negative, empty and unknown-unit values raise :class:`ConfigError`
    naming ``name``.
    """
    if isinstance(value, bool):
        raise ConfigError(f"{name}: expected a duration, got a boolean")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _PATTERN.match(value)
        if match is None:
            raise ConfigError(
                f"{name}: {value!r} is not a duration; use a number of seconds or e.g. "
                "'250ms', '30s', '1.5m', '2h'"
            )
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds < 0:
        raise ConfigError(f"{name}: must not be negative, got {value!r}")
    return seconds


def to_nanos(seconds: float) -> int:
    """Convert seconds to the integer nanoseconds JetStream's JSON API expects."""
    return round(seconds * 1_000_000_000)
