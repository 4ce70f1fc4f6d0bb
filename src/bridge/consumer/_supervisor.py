"""Supervision of a long-running part's tasks: restart what dies, count it, report it.

A :class:`TaskSupervisor` owns named tasks (the consumer's ``receive``, ``worker-0``
... and ``progress``), each started from a factory.  The loops in those tasks catch
every ``Exception`` of one round themselves; the supervisor covers what still ends a
task — a ``BaseException`` no loop catches (a stray ``CancelledError``, an exotic
exception from a library or a handler), a cancellation from outside, even a return:

- **Death**: a task that ends while its owner runs is logged at ERROR with the
  exception and its traceback, counted (:attr:`TaskSupervisor.restarts`), reported to
  the owner's ``on_death`` hook (the consumer NAKs the deliveries the task held, so
  the in-progress ticker does not keep them from the server for ever), and started
  again from its factory.  A task that dies again soon waits a growing pause first
  (``FIRST_PAUSE`` doubling up to ``MAX_PAUSE``), so one that dies at once cannot spin.
- **Health** (:meth:`TaskSupervisor.health`): unhealthy while a task is dead (its
  restart has not begun) or crash-looping — ``CRASH_LOOP_DEATHS`` deaths of one task
  within ``CRASH_LOOP_WINDOW`` seconds; the report names the task and its last error.
  One death followed by a restart is counted and logged but healthy.
- :meth:`TaskSupervisor.closing` first when the owner stops: a task that ends after
  that is the owner's business (it awaits its tasks), never a death.

Nothing here raises from a task's done-callback: the hook's failures are logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("bridge.supervisor")

FIRST_PAUSE = 0.1
MAX_PAUSE = 5.0
CRASH_LOOP_DEATHS = 3
CRASH_LOOP_WINDOW = 60.0
_KEPT_DEATHS = 64

TaskFactory = Callable[[], Coroutine[Any, Any, None]]
DeathHook = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class TaskHealth:
    """What :meth:`TaskSupervisor.health` reports (no secrets, JSON-friendly values)."""

    healthy: bool
    problems: tuple[str, ...] = ()
    task_restarts: int = 0
    last_error: str | None = None  # "<task>: <exception repr>" of the last death


@dataclass(frozen=True, slots=True)
class _Death:
    at: float  # time.monotonic()
    task: str
    error: str


def describe(error: BaseException | None) -> str:
    """``"ExceptionClass('message')"``, cut short enough for a health report."""
    return "returned" if error is None else repr(error)[:300]


class TaskSupervisor:
    """Named tasks of one owner, restarted when they die (module doc)."""

    def __init__(self, owner: str, *, on_death: DeathHook | None = None) -> None:
        self.owner = owner
        self.restarts = 0
        self._on_death = on_death
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._factories: dict[str, TaskFactory] = {}
        self._waiting: dict[str, float] = {}  # task -> monotonic time its restart begins
        self._deaths: deque[_Death] = deque(maxlen=_KEPT_DEATHS)
        self._closing = False

    def start(self, name: str, factory: TaskFactory) -> asyncio.Task[None]:
        """Run ``factory()`` as task ``name`` under supervision."""
        self._closing = False
        self._factories[name] = factory
        return self._spawn(name, 0.0)

    def task(self, name: str) -> asyncio.Task[None] | None:
        return self._tasks.get(name)

    @property
    def names(self) -> list[str]:
        return list(self._tasks)

    def closing(self) -> None:
        """The owner is stopping: tasks that end from now on are not restarted."""
        self._closing = True

    def clear(self) -> None:
        """Forget the (finished) tasks after the owner stopped; counts are kept."""
        self._tasks.clear()
        self._factories.clear()
        self._waiting.clear()

    def health(self) -> TaskHealth:
        now = time.monotonic()
        problems: list[str] = []
        for name, task in self._tasks.items():
            if name in self._waiting:
                problems.append(
                    f"{name} is dead, restarting in {max(self._waiting[name] - now, 0):.1f}s "
                    f"(last error: {self._last_error(name)})"
                )
            elif task.done() and not self._closing:
                problems.append(f"{name} is dead: {self._last_error(name)}")
        recent: dict[str, int] = {}
        for death in self._deaths:
            if now - death.at <= CRASH_LOOP_WINDOW:
                recent[death.task] = recent.get(death.task, 0) + 1
        for name, deaths in recent.items():
            if deaths >= CRASH_LOOP_DEATHS:
                problems.append(
                    f"{name} is crash-looping: died {deaths} times in the last "
                    f"{CRASH_LOOP_WINDOW:.0f}s (last error: {self._last_error(name)})"
                )
        last = self._deaths[-1] if self._deaths else None
        return TaskHealth(
            healthy=not problems,
            problems=tuple(problems),
            task_restarts=self.restarts,
            last_error=f"{last.task}: {last.error}" if last else None,
        )

    # -- internals ----------------------------------------------------------------
    def _spawn(self, name: str, pause: float) -> asyncio.Task[None]:
        if pause > 0:
            self._waiting[name] = time.monotonic() + pause
        task = asyncio.create_task(self._run(name, pause), name=f"bridge-{self.owner}-{name}")
        self._tasks[name] = task
        task.add_done_callback(lambda done: self._done(name, done))
        return task

    async def _run(self, name: str, pause: float) -> None:
        if pause > 0:
            await asyncio.sleep(pause)
            self._waiting.pop(name, None)
        await self._factories[name]()

    def _done(self, name: str, task: asyncio.Task[None]) -> None:
        if self._closing or self._tasks.get(name) is not task:
            return
        self._waiting.pop(name, None)
        error: BaseException | None = (
            asyncio.CancelledError("cancelled from outside") if task.cancelled()
            else task.exception()
        )  # fmt: skip
        now = time.monotonic()
        self._deaths.append(_Death(now, name, describe(error)))
        self.restarts += 1
        deaths = sum(1 for d in self._deaths if d.task == name and now - d.at <= CRASH_LOOP_WINDOW)
        pause = 0.0 if deaths <= 1 else min(FIRST_PAUSE * 2 ** (deaths - 2), MAX_PAUSE)
        log.error(
            "task died; restarting it",
            extra={
                "owner": self.owner,
                "task": name,
                "error": describe(error),
                "error_class": type(error).__name__ if error is not None else None,
                "restarts": self.restarts,
                "pause": pause,
            },
            exc_info=(type(error), error, error.__traceback__) if error is not None else None,
        )
        if self._on_death is not None:
            try:
                self._on_death(name)
            except Exception as exc:  # the restart below must happen anyway
                log.error("death hook failed", extra={"task": name, "error": repr(exc)})
        self._spawn(name, pause)

    def _last_error(self, name: str) -> str:
        for death in reversed(self._deaths):
            if death.task == name:
                return death.error
        return "none recorded"
