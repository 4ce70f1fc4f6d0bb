"""The processes of ``make up``: :class:`Devstack` starts, watches and stops them.

The order, the databases, the env files and the errors are described in
:mod:`services.devstack` (the entry point); this module owns every process it
starts and :meth:`Devstack.stop` stops them in reverse order.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import TextIO

import httpx

from bridge.env import write_env_file
from bridge.testing import NatsServer, PostgresServer, database_name
from services.devstack_db import (
    DEFAULT_DATABASES,
    URL_VARIABLES,
    given_database,
    own_database,
)
from services.devstack_support import (
    APPS,
    AppSpec,
    DevstackError,
    app_environment,
    check_ports,
    env_file_values,
    shown_path,
    step,
)
from services.shared.db import migrate

HEALTH_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
PROVISION_TIMEOUT = 60.0


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
        self.env_files: dict[str, Path] = {}
        self.log_path = self.logs / "devstack.log"
        self._log_handler: logging.Handler | None = None

    def say(self, text: str) -> None:
        print(f"devstack: {text}", file=self.out, flush=True)

    # -- start ------------------------------------------------------------------------
    def open_log(self) -> None:
        """Send this process's log records (and alembic's) to ``logs/devstack.log``."""
        self.logs.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.log_path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(min(root.level or logging.INFO, logging.INFO))
        logging.captureWarnings(True)  # e.g. the embedded server's: to the log, not the terminal
        self._log_handler = handler

    def close_log(self) -> None:
        handler, self._log_handler = self._log_handler, None
        if handler is not None:
            logging.captureWarnings(False)
            logging.getLogger().removeHandler(handler)
            handler.close()

    def start(self) -> None:
        mode, consumer_mode = self.args.mode, self.args.consumer_mode
        a_port, b_port, nats_port = check_ports(self.args)
        urls = asyncio.run(self._prepare_databases())
        app_env: dict[str, dict[str, str]] = {name: {} for name in APPS}
        admin_env: dict[str, dict[str, str]] = {}
        if mode == "restrictive":
            nats_url, app_env, admin_env = self._start_restrictive_nats(nats_port, consumer_mode)
        else:
            with step("starting NATS"):
                self.nats = NatsServer(
                    port=nats_port, store_dir=self.workdir / "nats", name="devstack"
                ).start()
            nats_url = self.nats.url
        self.say(f"NATS {nats_url} ({mode}, consumers: {consumer_mode})")
        pairs = (APPS, tuple(reversed(APPS)))
        for (name, peer), port, url in zip(pairs, (a_port, b_port), urls, strict=True):
            self.apps.append(AppSpec(name, peer, port, url, app_env[name]))
        with step("writing the env files"):
            self._write_env_files(mode, consumer_mode, nats_url, admin_env)
        for app in self.apps:
            self._spawn(app, mode=mode, consumer_mode=consumer_mode, nats_url=nats_url)
        self._wait_healthy()

    def _write_env_files(
        self, mode: str, consumer_mode: str, nats_url: str, admin_env: dict[str, dict[str, str]]
    ) -> None:
        """``<app>.env`` (and in restrictive mode ``<app>.admin.env``) under the workdir."""
        for app in self.apps:
            values = env_file_values(app, mode=mode, consumer_mode=consumer_mode, nats_url=nats_url)
            self.env_files[app.name] = write_env_file(self.workdir / f"{app.name}.env", values)
            if app.name in admin_env:
                # devstack's own additions (database, port, models) + the stack's admin view.
                own = {k: v for k, v in values.items() if k not in app.env}
                write_env_file(
                    self.workdir / f"{app.name}.admin.env", {**own, **admin_env[app.name]}
                )

    def _start_restrictive_nats(
        self, port: int, consumer_mode: str
    ) -> tuple[str, dict[str, dict[str, str]], dict[str, dict[str, str]]]:
        try:
            from provisioner.stack import write_restrictive_stack
        except ImportError as exc:  # explicit, never a silent fallback to non-restrictive
            raise DevstackError(f"restrictive mode: not available yet ({exc})") from exc
        with step("starting NATS (restrictive)"):
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
        return (
            stack.url,
            {app: stack.app_env(app) for app in APPS},
            {app: stack.operator_env(app) for app in APPS},
        )

    async def _prepare_databases(self) -> list[str]:
        """Given or own databases (:mod:`services.devstack_db`), migrated, one URL per app."""
        given = {app: os.environ.get(URL_VARIABLES[app]) or "" for app in APPS}
        urls: list[str] = []
        if any(given.values()):
            if not all(given.values()):
                missing = [URL_VARIABLES[app] for app in APPS if not given[app]]
                raise DevstackError(
                    f"set both DATABASE_URL_A and DATABASE_URL_B, or neither (devstack then "
                    f"uses its own {' and '.join(DEFAULT_DATABASES.values())}); "
                    f"{', '.join(missing)} is unset"
                )
            for app in APPS:
                url, foreign = await given_database(given[app], variable=URL_VARIABLES[app])
                if foreign:
                    self.say(
                        f"note: {URL_VARIABLES[app]} ({database_name(url)}) also holds tables "
                        f"that are not ours ({', '.join(foreign[:5])}); migrating into it as given"
                    )
                urls.append(url)
            self.say(f"PostgreSQL: {', '.join(database_name(u) for u in urls)} (as given)")
        else:
            with step("starting PostgreSQL"):
                self.postgres = PostgresServer(data_dir=self.workdir / "postgres")
            for app in APPS:
                with step(f"preparing database {DEFAULT_DATABASES[app]} ({app})"):
                    urls.append(await own_database(self.postgres, DEFAULT_DATABASES[app]))
            self.say(
                f"PostgreSQL ({self.postgres.kind}): own databases "
                f"{', '.join(DEFAULT_DATABASES.values())} (DATABASE_URL_A/_B to use others)"
            )
        for app, url in zip(APPS, urls, strict=True):
            with step(f"migrating {database_name(url)} ({app})"):
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
        for name, path in self.env_files.items():
            admin = path.with_name(f"{name}.admin.env")
            also = f" (admin: --env-file {shown_path(admin)})" if admin.exists() else ""
            self.say(f"CLI for {name}: bridge --env-file {shown_path(path)} status{also}")

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
        started = bool(self.processes) or self.nats is not None or self.postgres is not None
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
        if started:
            self.say("stopped")
