"""System A and System B for fault scenarios: in-process apps or uvicorn processes.

A :class:`Side` is one app name with its database and one or more instances serving
it (scale-out runs two processes on one database).  An instance is either

- :class:`InProcessInstance`: the real app and lifespan (bridge, relay, consumer) in
  this event loop, reached over ASGI — fast to start, used where the fault is outside
  the services (NATS, PostgreSQL); or
- :class:`ProcessInstance`: ``python -m uvicorn services.<app>.main:app`` with the
  environment devstack gives it (plus ``ACK_WAIT``/``BACKOFF``/``MAX_DELIVER``), so it
  can be killed with ``SIGKILL`` and restarted.

:class:`RestartablePostgres` is an embedded ``pgserver`` cluster (never the machine's
own server on :5432) that can be crashed (``pg_ctl stop -m immediate``: every backend
dies without a checkpoint, the next start runs crash recovery) and started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from bridge.config import BridgeConfig, ConsumerOptions, RelayOptions
from bridge.envelope import utcnow
from bridge.ids import compose
from bridge.testing import PostgresServer, free_port
from services.shared.app import create_app
from services.shared.db import migrate
from services.shared.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 45.0
STOP_TIMEOUT = 15.0

#: In-process timings: retries come back within a second or two.
FAST: dict[str, Any] = {
    "backoff": (0.2, 0.5, 1.0, 2.0),
    "max_deliver": 8,
    "ack_wait": 5.0,
    "duplicate_window": 60.0,
    "reconnect_wait": 0.2,
    "reconnect_wait_max": 1.0,
    "relay": RelayOptions(poll_interval=0.2, lease=5.0, retry_base=0.05, retry_max=0.5),
    "consumer": ConsumerOptions(fetch_timeout=0.2),
}


class InProcessInstance:
    """The service app running in this event loop, reached through ASGI."""

    def __init__(self, label: str, settings: ServiceSettings, config: BridgeConfig) -> None:
        self.label = label
        self.settings = settings
        self.config = config
        self.app = create_app(settings, bridge_config=config)
        # raise_app_exceptions=False: an unhandled error is a 500, as a real server answers.
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app, raise_app_exceptions=False),
            base_url=f"http://{label}",
        )
        self._stack = AsyncExitStack()

    async def start(self) -> None:
        await self._stack.enter_async_context(self.app.router.lifespan_context(self.app))

    async def stop(self) -> None:
        await self.client.aclose()
        await self._stack.aclose()


class ProcessInstance:
    """``uvicorn services.<app>.main:app`` as a child process with its own port and log."""

    def __init__(self, label: str, module: str, env: Mapping[str, str], log_path: Path) -> None:
        self.label = label
        self.module = module
        self.port = free_port()
        self.env = {**env, "PORT": str(self.port)}
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = httpx.AsyncClient(base_url=self.url)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self) -> None:
        command = [
            sys.executable, "-m", "uvicorn", f"{self.module}:app",
            "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning",
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                command, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
            )

    async def wait_healthy(self, timeout: float = START_TIMEOUT) -> None:
        """Poll ``/health`` until 200 (NATS and the database reachable)."""
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(base_url=self.url, timeout=2.0) as probe:
            while time.monotonic() < deadline:
                if self.proc is None or self.proc.poll() is not None:
                    raise AssertionError(f"{self.label} exited:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await probe.get("/health")).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise AssertionError(f"{self.label} not healthy after {timeout}s:\n{self.log_tail()}")

    async def start(self) -> None:
        self.spawn()
        await self.wait_healthy()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(STOP_TIMEOUT)

    async def restart(self) -> None:
        """A fresh connection pool too: the old keep-alive sockets died with the process."""
        await self.client.aclose()
        self.client = httpx.AsyncClient(base_url=self.url)
        await self.start()

    async def terminate(self) -> None:
        """SIGTERM and wait: graceful, the lifespan stops the bridge (consumer drained)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    async def stop(self) -> None:
        await self.client.aclose()
        await self.terminate()

    def log_tail(self, chars: int = 4000) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]


Instance = InProcessInstance | ProcessInstance


@dataclass
class Side:
    """One app (name, peer, database) and the instances serving it."""

    app: str
    peer: str
    database_url: str
    config: BridgeConfig
    instances: list[Instance] = field(default_factory=list)


@dataclass
class Deployment:
    """Both sides over one stream; owns every instance it started."""

    a: Side
    b: Side
    stream: str
    nats_urls: tuple[str, ...]

    @property
    def sides(self) -> tuple[Side, Side]:
        return (self.a, self.b)

    async def stop(self) -> None:
        for side in self.sides:
            for instance in side.instances:
                with contextlib.suppress(Exception):
                    await instance.stop()


async def new_database(postgres: PostgresServer, stack: AsyncExitStack) -> str:
    url = await postgres.create_database()
    stack.push_async_callback(_drop_quietly, postgres, url)
    await migrate(url)
    return url


async def in_process_pair(
    stack: AsyncExitStack,
    postgres: PostgresServer,
    unique: str,
    *,
    stream: str,
    nats_urls: Sequence[str],
    a_overrides: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> Deployment:
    """Apps ``a<unique>`` and ``b<unique>`` in this process, each on a fresh migrated
    database, over ``stream``; ``stack`` stops both (and drops the databases).
    ``a_overrides``: config for A only (e.g. its own ``clock``), over ``overrides``."""
    db_a, db_b = await new_database(postgres, stack), await new_database(postgres, stack)
    urls = tuple(nats_urls)
    a = await in_process_side(
        f"a{unique}", f"b{unique}", db_a, stream=stream, nats_urls=urls,
        **{**overrides, **(a_overrides or {})},
    )  # fmt: skip
    deployment = Deployment(a, a, stream, urls)  # b filled in below; stop() owns both
    stack.push_async_callback(deployment.stop)
    deployment.b = await in_process_side(
        f"b{unique}", f"a{unique}", db_b, stream=stream, nats_urls=urls, **overrides
    )
    return deployment


def fast_config(**extra: object) -> dict[str, object]:
    """The result file's ``config`` of a scenario on the in-process FAST timings."""
    return {
        "consumer_mode": "pull",
        "ack_wait": FAST["ack_wait"],
        "backoff": list(FAST["backoff"]),
        "max_deliver": FAST["max_deliver"],
        **extra,
    }


async def _drop_quietly(postgres: PostgresServer, url: str) -> None:
    with contextlib.suppress(Exception):
        await postgres.drop_database(url)


#: Ids of records a test crafts as another system's (system 9: neither side issues them).
_CRAFTED_IDS = itertools.count(compose(utcnow(), 0, 9), 64)


def new_id() -> int:
    """A fresh record id, never repeated in a run, that neither side's database issues."""
    return next(_CRAFTED_IDS)


def settings_for(app: str, peer: str, database_url: str) -> ServiceSettings:
    return ServiceSettings(
        app_name=app,
        destination_app=peer,
        database_url=database_url,
        db_pool_size=5,
        id_system_number=1 if app < peer else 2,  # each side its own (instances share it)
    )


def bridge_env(stream: str, nats_urls: Sequence[str]) -> dict[str, str]:
    """The bridge's variables of an in-process side (bridge.env reads them)."""
    return {"NATS_URLS": ",".join(nats_urls), "STREAM_NAME": stream, "CONSUMER_MODE": "pull"}


async def in_process_side(
    app: str,
    peer: str,
    database_url: str,
    *,
    stream: str,
    nats_urls: Sequence[str],
    **overrides: Any,
) -> Side:
    settings = settings_for(app, peer, database_url)
    config = settings.to_bridge_config(env=bridge_env(stream, nats_urls), **{**FAST, **overrides})
    instance = InProcessInstance(app, settings, config)
    await instance.start()
    return Side(app, peer, database_url, config, [instance])


def process_env(
    app: str,
    peer: str,
    database_url: str,
    *,
    stream: str,
    nats_urls: Sequence[str],
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """What devstack gives a service process, plus the scenario's knobs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUMER_MODE", "NATS_"))}
    env.update(
        {
            "APP_NAME": app,
            "DESTINATION_APP": peer,
            "DATABASE_URL": database_url,
            "NATS_URLS": ",".join(nats_urls),
            "STREAM_NAME": stream,
            "MODE": "non_restrictive",
            "CONSUMER_MODE": "pull",
            "DB_POOL_SIZE": "5",
            "LOG_LEVEL": "WARNING",
        }
    )
    env.update(extra or {})
    return env


def process_side(
    app: str,
    peer: str,
    database_url: str,
    *,
    module: Literal["services.system_a.main", "services.system_b.main"],
    stream: str,
    nats_urls: Sequence[str],
    log_dir: Path,
    replicas: int = 1,
    extra_env: Mapping[str, str] | None = None,
) -> Side:
    """A side of ``replicas`` uvicorn processes (not started: see :func:`start_all`)."""
    env = process_env(app, peer, database_url, stream=stream, nats_urls=nats_urls, extra=extra_env)
    config = settings_for(app, peer, database_url).to_bridge_config(env=env)
    instances: list[Instance] = [
        ProcessInstance(f"{app}-{i}", module, env, log_dir / f"{app}-{i}.log")
        for i in range(replicas)
    ]
    return Side(app, peer, database_url, config, instances)


async def start_all(deployment: Deployment) -> None:
    """Spawn every process instance at once, then wait until each is healthy."""
    processes = [
        i for side in deployment.sides for i in side.instances if isinstance(i, ProcessInstance)
    ]
    for instance in processes:
        instance.spawn()
    await asyncio.gather(*(i.wait_healthy() for i in processes))


class RestartablePostgres:
    """An embedded PostgreSQL (``pgserver``) this test may crash and restart."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.server = PostgresServer(data_dir=data_dir, env={"BRIDGE_EMBEDDED_PG": "1"})
        assert self.server.kind == "embedded"

    @property
    def _embedded(self) -> Any:
        return self.server._embedded

    def crash(self) -> None:
        """``pg_ctl stop -m immediate``: backends die at once, no shutdown checkpoint."""
        from pgserver._commands import pg_ctl  # type: ignore[import-untyped]

        pg_ctl(
            ["-m", "immediate", "-w", "stop"],
            pgdata=self._embedded.pgdata,
            user=self._embedded.system_user,
            timeout=30,
        )

    def start(self) -> None:
        """Start it again (crash recovery runs); same socket directory, same URL."""
        self._embedded.ensure_postgres_running()

    def cleanup(self) -> None:
        self.server.cleanup()


def process_pair(
    app_a: str,
    app_b: str,
    db_a: str,
    db_b: str,
    *,
    stream: str,
    nats_urls: Sequence[str],
    log_dir: Path,
    env: Mapping[str, str],
    replicas: int = 1,
) -> Deployment:
    """System A and System B as ``replicas`` uvicorn processes each (not started yet)."""
    common: dict[str, Any] = {
        "stream": stream, "nats_urls": nats_urls, "log_dir": log_dir,
        "replicas": replicas, "extra_env": env,
    }  # fmt: skip
    return Deployment(
        process_side(app_a, app_b, db_a, module="services.system_a.main", **common),
        process_side(app_b, app_a, db_b, module="services.system_b.main", **common),
        stream,
        tuple(nats_urls),
    )
