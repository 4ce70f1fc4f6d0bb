"""devstack's pure parts: its error, the ports, and what each service process gets.

- :class:`DevstackError`: something did not start; its message is one line that
  says what (devstack prints it and exits 1).  :func:`step` turns any other
  failure of a start-up step into one.
- Ports: :func:`check_ports` (System A, System B, NATS), each busy port an error
  naming the ``make up`` variable and the flag to change.
- Environment: :func:`app_environment` (what a service process runs with) and
  :func:`env_file_values` (what ``.devstack/<app>.env`` holds: the same names,
  nothing inherited from the parent).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bridge.testing import free_port

APPS = ("system_a", "system_b")
PORTS = {"non_restrictive": (3000, 3001), "restrictive": (3100, 3101)}
NATS_PORT = 4222
#: Per port: the command-line flag, the make variable, what listens there.
PORT_NAMES = {
    "a_port": ("--a-port", "A_PORT", "System A"),
    "b_port": ("--b-port", "B_PORT", "System B"),
    "nats_port": ("--nats-port", "NATS_PORT", "NATS"),
}


class DevstackError(Exception):
    """Something did not start; the one-line message says what (devstack exits 1)."""


@contextlib.contextmanager
def step(what: str) -> Iterator[None]:
    """Turn any failure of ``what`` into a one-line :class:`DevstackError` (the
    exception and its traceback stay on the chain, for the log)."""
    try:
        yield
    except DevstackError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise DevstackError(f"{what} failed: {type(exc).__name__}: {first}") from exc


@dataclass(frozen=True, slots=True)
class AppSpec:
    """One service process: its name, port, database and environment additions."""

    name: str
    peer: str
    port: int
    database_url: str
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "uvicorn", f"services.{self.name}.main:app",
            "--host", "127.0.0.1", "--port", str(self.port),
        ]  # fmt: skip


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def port_in_use(option: str, port: int) -> DevstackError:
    flag, variable, what = PORT_NAMES[option]
    return DevstackError(
        f"port {port} ({what}) is in use; choose another: make up {variable}=<port> "
        f"(or {flag} <port>)"
    )


def choose_nats_port(preferred: int | None) -> int:
    """``preferred`` (must be free), else 4222 if free, else any free port."""
    if preferred is not None:
        if not port_free(preferred):
            raise port_in_use("nats_port", preferred)
        return preferred
    return NATS_PORT if port_free(NATS_PORT) else free_port()


def check_ports(args: argparse.Namespace) -> tuple[int, int, int]:
    """System A's, System B's and NATS' ports, each checked free (DevstackError if not)."""
    defaults = PORTS[args.mode]
    ports = (args.a_port or defaults[0], args.b_port or defaults[1])
    for option, port in zip(("a_port", "b_port"), ports, strict=True):
        if not port_free(port):
            raise port_in_use(option, port)
    return ports[0], ports[1], choose_nats_port(args.nats_port)


def app_environment(
    app: AppSpec,
    *,
    base: Mapping[str, str],
    mode: str,
    consumer_mode: str,
    nats_url: str,
) -> dict[str, str]:
    """The environment a service process runs with (``app.env`` wins: restrictive creds)."""
    env = dict(base)
    # A parent's per-app overrides would contradict the mode chosen on the command line.
    for name in APPS:
        env.pop(f"CONSUMER_MODE_{name.upper()}", None)
    env.update(
        {
            "APP_NAME": app.name,
            "DESTINATION_APP": app.peer,
            "DATABASE_URL": app.database_url,
            "NATS_URL": nats_url,
            "MODE": mode,
            "CONSUMER_MODE": consumer_mode,
            "PORT": str(app.port),
        }
    )
    env.pop("NATS_URLS", None)
    # Where `bridge backfill` (run with this environment) finds the synced models.
    env.setdefault("BRIDGE_MODELS", "services.shared.models")
    env.update(app.env)
    return env


def env_file_values(
    app: AppSpec, *, mode: str, consumer_mode: str, nats_url: str
) -> dict[str, str]:
    """What ``.devstack/<app>.env`` holds: the app's own environment, nothing inherited."""
    return app_environment(app, base={}, mode=mode, consumer_mode=consumer_mode, nats_url=nats_url)


def shown_path(path: Path) -> str:
    """``path`` relative to the working directory when below it (what a user types)."""
    relative = os.path.relpath(path)
    return path.as_posix() if relative.startswith("..") else relative
