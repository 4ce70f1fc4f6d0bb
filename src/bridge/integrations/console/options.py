"""``ConsoleOptions``: the operator console's settings, frozen and validated once.

- ``token``: the operator token.  ``None`` (the default): the console is read-only
  and refuses every action, saying why.  Set, it must be at least
  :data:`MIN_TOKEN_LENGTH` characters (a guessable token is refused at
  construction); it is compared in constant time and never shown or logged.
  From the environment: ``BRIDGE_CONSOLE_TOKEN`` (:func:`bridge.env.console_token_from_env`).
- ``operator``: the name audit entries give whoever signed in with the token.
- ``anonymous_read``: show the page without signing in (the default).  Dead-letter
  bodies are the application's data: set ``False`` where the console is reachable
  by people who may not read them; then every page asks for the token first.
- ``sample_interval`` and ``history``: the charts' resolution and span (10 s over
  the last hour); the samples are kept in memory (:mod:`.history`).
- ``session_ttl``: how long a sign-in lasts (8 h).
- ``page_size``, ``scan_limit``: dead letters shown per page and read at most to
  fill one (filters skip letters); ``max_batch``: letters one action may name;
  ``body_preview_bytes``: how much of a body the list shows (the letter's own
  page shows all of it); ``audit_rows``: entries the page lists.
- ``secure_cookies``: ``None`` marks the sign-in cookie ``Secure`` when the
  request came over HTTPS; ``True``/``False`` force it (behind a TLS proxy: True).

Invalid values raise :class:`~bridge.errors.ConfigError` naming the option.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge._support.durations import parse_duration
from bridge.env import console_token_from_env
from bridge.errors import ConfigError

#: Shortest operator token accepted (a random 16+ character token cannot be guessed
#: through a web form).
MIN_TOKEN_LENGTH = 16
#: Most samples a history may hold (``history / sample_interval``).
MAX_SAMPLES = 20_000


@dataclass(frozen=True, slots=True)
class ConsoleOptions:
    """Settings of one :class:`~bridge.integrations.console.app.Console` (module doc)."""

    token: str | None = field(default=None, repr=False)
    operator: str = "operator"
    anonymous_read: bool = True
    sample_interval: float = 10.0
    history: float = 3600.0
    session_ttl: float = 8 * 3600.0
    page_size: int = 100
    scan_limit: int = 2000
    max_batch: int = 1000
    body_preview_bytes: int = 2048
    audit_rows: int = 50
    secure_cookies: bool | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        token = self.token
        if token is not None:
            if not isinstance(token, str) or len(token) < MIN_TOKEN_LENGTH:
                raise ConfigError(
                    f"console.token must be at least {MIN_TOKEN_LENGTH} characters "
                    "(BRIDGE_CONSOLE_TOKEN; e.g. `python -c 'import secrets; "
                    "print(secrets.token_urlsafe(24))'`)"
                )
            if token != token.strip() or any(ord(c) < 32 for c in token):
                raise ConfigError(
                    "console.token must not hold spaces at its ends or control characters"
                )
        if not self.operator or len(self.operator) > 64:
            raise ConfigError("console.operator must be 1 to 64 characters")
        for name in ("sample_interval", "history", "session_ttl"):
            value = parse_duration(getattr(self, name), name=f"console.{name}")
            if value <= 0:
                raise ConfigError(f"console.{name} must be greater than zero")
            set_(self, name, value)
        if self.history < self.sample_interval:
            raise ConfigError("console.history must be at least console.sample_interval")
        if self.history / self.sample_interval > MAX_SAMPLES:
            raise ConfigError(
                f"console.history / console.sample_interval must be at most {MAX_SAMPLES} "
                "samples: raise sample_interval or shorten history"
            )
        for name in ("page_size", "scan_limit", "max_batch", "body_preview_bytes", "audit_rows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"console.{name} must be a positive integer, got {value!r}")
        if self.scan_limit < self.page_size:
            raise ConfigError("console.scan_limit must be at least console.page_size")

    @property
    def actions_enabled(self) -> bool:
        """Whether anyone can act (a token is configured)."""
        return self.token is not None

    @property
    def samples(self) -> int:
        """How many samples the history keeps."""
        return max(2, round(self.history / self.sample_interval))


def options_from_env(env: Mapping[str, str], **overrides: Any) -> ConsoleOptions:
    """The console's options: the token from ``env`` (``BRIDGE_CONSOLE_TOKEN``), the
    rest from ``overrides`` (which win, ``token`` included)."""
    values: dict[str, Any] = {"token": console_token_from_env(env)}
    values.update(overrides)
    return ConsoleOptions(**values)
