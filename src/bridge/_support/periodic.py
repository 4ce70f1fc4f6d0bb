"""``Periodic``: run one async step every ``interval`` seconds until stopped.

The shape shared by the bridge's background chores (inbox retention, the periodic
reconciler): the first step runs one interval after :meth:`Periodic.start`; a step
that raises is logged by ``on_error`` and the schedule goes on (a chore must never
stop the part it serves); :meth:`Periodic.stop` ends the schedule, lets a running
step finish within ``timeout``, then cancels it, and always awaits the task.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable


class Periodic:
    """Owns one task that awaits ``step()`` every ``interval`` seconds."""

    def __init__(
        self,
        step: Callable[[], Awaitable[None]],
        interval: float,
        *,
        name: str,
        on_error: Callable[[Exception], None],
    ) -> None:
        self._step = step
        self._interval = interval
        self._name = name
        self._on_error = on_error
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None

    async def start(self) -> None:
        """Start the schedule (idempotent)."""
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.create_task(self._loop(), name=self._name)

    async def stop(self, timeout: float = 10.0) -> None:
        """End the schedule; a running step gets ``timeout`` seconds, then is cancelled."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._interval)
            if self._stopping.is_set():
                return
            try:
                await self._step()
            except Exception as exc:
                self._on_error(exc)
