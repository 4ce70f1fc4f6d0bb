"""Load for fault scenarios: creates and updates of organizations and users on both sides.

``workers`` coroutines each own the records they create and write them one request at
a time, on a random side (and a random instance of it), so every record has a linear
history (see :mod:`fault_history`).  Users are created under any organization some
worker has seen acknowledged; on the other side that organization may not have
arrived yet — then the API answers 422/404 and the write is simply ``rejected``.
Updates always change ``name`` (never a no-op) and sometimes move the natural key to a
fresh, unique value, so no write can collide with another record's key: the only
dead letters a correct system may produce under this load are none.

With ``shared=True`` the records are not owned: every worker creates into and writes
from one pool, on a random side, so the same records are written on both sides
concurrently (the clock-skew scenario).  Before each update it reads the record on the
instance it is about to write (``applied_before`` in :mod:`fault_history`).

Every loop is bounded: by ``stop``, by ``max_ops`` per worker and by ``deadline``.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
from fault_history import History, Kind, Resource

REQUEST_TIMEOUT = 10.0


class Instance(Protocol):
    """One running service instance the load can talk to."""

    label: str
    client: httpx.AsyncClient


class Target(Protocol):
    """One side: its app name and the instances serving it."""

    app: str

    @property
    def instances(self) -> Sequence[Instance]: ...


@dataclass
class Owned:
    resource: Resource
    record_id: str


@dataclass
class Load:
    """Drives random writes against ``sides`` and records them in ``history``."""

    sides: Sequence[Target]
    history: History
    seed: int
    workers: int = 6
    max_ops: int = 400
    pace: float = 0.01
    shared: bool = False
    orgs: list[str] = field(default_factory=list)
    pool: list[Owned] = field(default_factory=list)  # every record, with shared=True
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def start(self, duration: float) -> None:
        deadline = time.monotonic() + duration
        self._tasks = [
            asyncio.create_task(self._worker(i, deadline), name=f"fault-load-{i}")
            for i in range(self.workers)
        ]

    async def stop(self, timeout: float = 20.0) -> None:
        """Stop issuing requests; wait for the ones in flight (bounded by their timeout)."""
        self._stop.set()
        if not self._tasks:
            return
        done, pending = await asyncio.wait(self._tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        self._tasks = []

    async def wait_acked(self, count: int, timeout: float) -> None:
        """Poll until ``count`` writes were acknowledged (the load is really running)."""
        deadline = time.monotonic() + timeout
        while self.history.acked_count() < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"load: only {self.history.acked_count()} acked writes after {timeout}s"
                )
            await asyncio.sleep(0.05)

    # -- one worker -------------------------------------------------------------------
    async def _worker(self, worker: int, deadline: float) -> None:
        rng = random.Random(self.seed * 1000 + worker)
        owned: list[Owned] = []
        for _ in range(self.max_ops):
            if self._stop.is_set() or time.monotonic() > deadline:
                return
            await self._step(worker, rng, owned)
            if self.pace:
                await asyncio.sleep(self.pace * rng.random() * 2)

    async def _step(self, worker: int, rng: random.Random, owned: list[Owned]) -> None:
        side = rng.choice(self.sides)
        instance = rng.choice(side.instances)
        owned = self.pool if self.shared else owned
        orgs = [o for o in owned if o.resource == "organization"]
        choice = rng.random()
        if len(orgs) < 2 or choice < 0.12:
            await self._create_org(worker, side.app, instance, owned)
        elif choice < 0.30 and self.orgs:
            await self._create_user(worker, side.app, instance, rng, owned)
        else:
            await self._update(worker, side.app, instance, rng, rng.choice(owned))

    async def _create_org(
        self, worker: int, app: str, instance: Instance, owned: list[Owned]
    ) -> None:
        token = uuid.uuid4().hex[:12]
        body = {"name": f"org-{token}", "domain": f"d{token}.test"}
        write = await self._call(
            worker, app, instance, "create", "organization", None, "POST", "/organizations", body
        )
        if write is not None:
            owned.append(Owned("organization", write))
            self.orgs.append(write)

    async def _create_user(
        self, worker: int, app: str, instance: Instance, rng: random.Random, owned: list[Owned]
    ) -> None:
        token = uuid.uuid4().hex[:12]
        body = {
            "organization_id": rng.choice(self.orgs),
            "name": f"user-{token}",
            "email": f"e{token}@example.com",
        }
        write = await self._call(
            worker, app, instance, "create", "user", None, "POST", "/users", body
        )
        if write is not None:
            owned.append(Owned("user", write))

    async def _update(
        self, worker: int, app: str, instance: Instance, rng: random.Random, record: Owned
    ) -> None:
        token = uuid.uuid4().hex[:12]
        body: dict[str, Any] = {"name": f"n-{token}"}
        if record.resource == "organization":
            body["active"] = rng.random() < 0.7
            if rng.random() < 0.2:
                body["domain"] = f"d{token}.test"
            path = f"/organizations/{record.record_id}"
        else:
            body["role"] = rng.choice(["admin", "member", "viewer"])
            if rng.random() < 0.2:
                body["email"] = f"e{token}@example.com"
            path = f"/users/{record.record_id}"
        seen = await self._version(instance, path) if self.shared else None
        await self._call(
            worker, app, instance, "update", record.resource, record.record_id, "PATCH", path,
            body, applied_before=seen,
        )  # fmt: skip

    @staticmethod
    async def _version(instance: Instance, path: str) -> dict[str, Any] | None:
        """The record's version on ``instance`` now, or ``None`` (not there, no answer)."""
        try:
            reply = await instance.client.get(path, timeout=REQUEST_TIMEOUT)
        except (httpx.HTTPError, OSError):
            return None
        if reply.status_code != 200:
            return None
        row = reply.json()
        return {"updated_at": row["updated_at"], "origin": row["origin"]}

    async def _call(
        self,
        worker: int,
        app: str,
        instance: Instance,
        kind: Kind,
        resource: Resource,
        record_id: str | None,
        method: str,
        path: str,
        body: dict[str, Any],
        applied_before: dict[str, Any] | None = None,
    ) -> str | None:
        """Make one request and record it; return the new record's id for an acked create."""
        started = time.monotonic()
        status: int | None = None
        response: dict[str, Any] | None = None
        error: str | None = None
        try:
            reply = await instance.client.request(method, path, json=body, timeout=REQUEST_TIMEOUT)
            status = reply.status_code
            if 200 <= status < 300:
                outcome = "acked"
                response = reply.json()
            elif 400 <= status < 500:
                outcome = "rejected"
            else:
                outcome = "indeterminate"
                error = reply.text[:300]
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            # Never reached the server: the request was not sent, nothing committed.
            outcome, error = "rejected", f"{type(exc).__name__}: {exc}"
        except (httpx.HTTPError, OSError) as exc:
            # Sent (or maybe sent) and no answer: it may have committed.
            outcome, error = "indeterminate", f"{type(exc).__name__}: {exc}"
        write = self.history.record(
            worker=worker, app=app, instance=instance.label, kind=kind, resource=resource,
            record_id=record_id, request=body, outcome=outcome, status=status,
            response=response, error=error, started=started, applied_before=applied_before,
        )  # fmt: skip
        return write.record_id if kind == "create" and outcome == "acked" else None
