"""``NotifyListener``: one PostgreSQL ``LISTEN`` connection that survives drops.

Contract:
- Holds a dedicated connection taken from the engine's pool (``engine.connect()``,
  the asyncpg driver connection underneath) listening on ``channel``.
- Calls ``on_notify()`` for every notification, and once after every (re)connect,
  because notifications sent while it was not listening are lost — the callback
  must be cheap (the relay sets an ``asyncio.Event``).
- A dropped connection (database restart, network cut, terminated backend) is
  noticed at once through asyncpg's termination listener — at the latest within
  ``check_interval`` — is discarded from the pool, and is re-established with
  exponential backoff and full jitter up to ``retry_max``.  Meanwhile the owner's
  other wake-ups (polling) cover the gap.
- A *dead* connection — cut without a FIN or an RST (a partition, a failed-over
  primary): it never closes, and an idle LISTEN never finds out — is found by a
  ``SELECT 1`` every ``check_interval`` that must answer within ``check_interval``;
  connecting, locking and listening must finish within ``SETUP_TIMEOUT`` (the pool's
  pre-ping on a dead pooled connection waits forever otherwise;
  :class:`bridge._support.deadline.Deadline`).  Either way the connection is dropped and
  re-established as above.
- ``start()`` / ``stop(timeout)``; the one task is owned and awaited on stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from bridge._support.backoff import backoff_delay
from bridge._support.deadline import Deadline

log = logging.getLogger("bridge.pg_listen")

#: Seconds to connect, take the session lock and LISTEN before the attempt counts as failed.
SETUP_TIMEOUT = 10.0


class NotifyListener:
    """LISTEN on ``channel`` and call ``on_notify`` (module doc for the contract)."""

    def __init__(
        self,
        engine: AsyncEngine,
        channel: str,
        on_notify: Callable[[], None],
        *,
        retry_max: float = 30.0,
        check_interval: float = 5.0,
        name: str = "listener",
    ) -> None:
        self._engine = engine
        self._channel = channel
        self._on_notify = on_notify
        self._retry_max = retry_max
        self._check_interval = check_interval
        self._name = name
        self._stopping = asyncio.Event()
        self._interrupt = asyncio.Event()  # connection lost, or stopping
        self._task: asyncio.Task[None] | None = None
        self._listening = False
        self._listening_event = asyncio.Event()
        #: (class, key): a session advisory lock ``pg_advisory_lock(class, hashtext(key))``
        #: held on the LISTEN connection while it is up — proof of life for the owner.
        self.session_lock: tuple[int, str] | None = None

    @property
    def listening(self) -> bool:
        """True while the LISTEN connection is established."""
        return self._listening

    async def wait_listening(self, timeout: float) -> bool:
        """Wait until the connection (and its session lock) is up; False on timeout."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._listening_event.wait(), timeout)
        return self._listening

    async def start(self) -> None:
        if self._task is not None:
            return
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name=f"bridge-listen-{self._name}")

    async def stop(self, timeout: float = 10.0) -> None:
        task, self._task = self._task, None
        self._stopping.set()
        self._interrupt.set()
        if task is None:
            return
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            self._interrupt.clear()
            try:
                await self._listen_once()
                failures = 0
                error = "connection closed"
            except Exception as exc:  # database restart etc.: the owner's polling covers it
                error = repr(exc)
            if self._stopping.is_set():
                return
            failures += 1
            log.warning(
                "LISTEN connection lost; reconnecting",
                extra={"channel": self._channel, "error": error, "attempt": failures},
            )
            delay = max(0.1, backoff_delay(failures, base=0.5, maximum=self._retry_max))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def _listen_once(self) -> None:
        """Listen until the connection drops or stop() is called."""
        setup = Deadline(SETUP_TIMEOUT, f"LISTEN {self._channel}: connecting")
        async with setup, self._engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection

            def notified(*_: object) -> None:
                self._on_notify()

            def terminated(*_: object) -> None:
                self._interrupt.set()

            driver.add_termination_listener(terminated)
            if self.session_lock is not None:
                await driver.execute(
                    "SELECT pg_advisory_lock($1, hashtext($2))", *self.session_lock
                )
            await driver.add_listener(self._channel, notified)
            setup.disarm()
            self._listening = True
            self._listening_event.set()
            self._on_notify()  # notifications may have been missed while not listening
            try:
                while not self._stopping.is_set() and not driver.is_closed():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._interrupt.wait(), self._check_interval)
                    if not self._interrupt.is_set() and not await self._alive(driver):
                        driver.terminate()  # dead: closed now, so it is discarded below
            finally:
                self._listening = False
                self._listening_event.clear()
                driver.remove_termination_listener(terminated)
                if driver.is_closed():
                    await conn.invalidate()  # never hand a dead connection back to the pool
                else:
                    with contextlib.suppress(Exception):
                        await driver.remove_listener(self._channel, notified)
                        # The connection goes back to the pool: drop the lock with it.
                        await driver.execute("SELECT pg_advisory_unlock_all()")

    async def _alive(self, driver: Any) -> bool:
        """A round trip within ``check_interval`` (module doc: dead connections)."""
        try:
            await driver.fetchval("SELECT 1", timeout=self._check_interval)
        except Exception as exc:  # timed out, or failed: either way not usable
            log.warning(
                "LISTEN connection does not answer; replacing it",
                extra={"channel": self._channel, "error": repr(exc)},
            )
            return False
        return True
