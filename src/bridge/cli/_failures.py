"""What a failure of a ``bridge`` command means: its exit code and the one line that
says what to do (:mod:`bridge.cli._options` has the codes).

- NATS: :class:`~bridge.errors.ConnectionError` already names the cause
  (:mod:`bridge.transport._causes`) → unreachable.
- The database: a refused or failed connection — nothing listening, an unknown host, a
  database that does not exist, credentials refused, too many connections (SQLSTATE
  classes 08, 28, 3D, 53, 57P03) — is unreachable, naming ``DATABASE_URL`` (its
  password hidden); a missing bridge table (42P01 on ``bridge_*``) is something
  missing, naming how to create it; any other database error is a failure.
- :class:`~bridge.errors.ConfigError` at any point is configuration.
"""

from __future__ import annotations

import socket

from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from bridge.cli._options import EXIT_FAILED, EXIT_UNREACHABLE
from bridge.transport.connection import redact_url

#: SQLSTATE prefixes of a connection the server refused or could not make.
_UNREACHABLE_STATES = ("08", "28", "3D", "53", "57P03")
_UNDEFINED_TABLE = "42P01"
SCHEMA_HINT = (
    "create the bridge's tables: run the Alembic migrations (migrations/), or "
    "`await bridge.schema.create_all(engine)` for a quick start"
)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def database_failure(exc: SQLAlchemyError | OSError, url: str | None) -> tuple[int, str]:
    """Exit code and message for a database failure of a command (module doc)."""
    where = f" at {redact_url(url)}" if url else ""
    state = getattr(getattr(exc, "orig", None), "sqlstate", None) or ""
    if isinstance(exc, OSError):
        reason = (
            "connection refused: nothing listens there"
            if isinstance(exc, ConnectionRefusedError)
            else "host not found"
            if isinstance(exc, socket.gaierror)
            else f"{type(exc).__name__}: {exc}"
        )
        return EXIT_UNREACHABLE, f"database unreachable{where}: {reason}; check DATABASE_URL"
    if isinstance(exc, DBAPIError) and state.startswith(_UNREACHABLE_STATES):
        return EXIT_UNREACHABLE, (
            f"database refused the connection{where}: {_first_line(exc)}; check DATABASE_URL"
        )
    message = _first_line(exc)
    if state == _UNDEFINED_TABLE and "bridge_" in message:
        return EXIT_FAILED, f"the database{where} lacks the bridge's tables ({message}); " + (
            SCHEMA_HINT
        )
    return EXIT_FAILED, f"database error{where}: {message}"
