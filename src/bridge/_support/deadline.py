"""``Deadline``: a timeout for database calls that may sit on a dead connection.

Contract: ``async with Deadline(seconds, what):`` bounds its body like
:func:`asyncio.timeout` — past the deadline the body is cancelled and the block raises
:class:`TimeoutError` naming ``what`` — with one difference: it cancels *again*, every
``repeat`` seconds, until the body gives up.  ``Deadline(None, ...)`` bounds nothing.
A cancellation from outside is never turned into a ``TimeoutError``.

Why: on a TCP connection that died without a FIN or an RST (a partition, a failed-over
primary) one cancellation can be absorbed.  asyncpg answers a cancelled query by asking
the server to cancel it, and its next call on that connection — SQLAlchemy's pool
pre-ping rolls back in a ``finally``, SQLAlchemy closes gracefully — first waits for the
server's acknowledgement, without limit when the connection has no ``command_timeout``.
The dead server never answers; only a further cancellation ends the wait, and then
SQLAlchemy discards the connection.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

#: Seconds between the cancellations after the deadline.
REPEAT = 1.0


class Deadline:
    """Bound the body to ``seconds`` (module doc); usable once."""

    def __init__(self, seconds: float | None, what: str, *, repeat: float = REPEAT) -> None:
        self._seconds = seconds
        self._what = what
        self._repeat = repeat
        self._task: asyncio.Task[object] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._cancelling = 0
        self._fired = 0

    @property
    def expired(self) -> bool:
        return self._fired > 0

    async def __aenter__(self) -> Deadline:
        self._task = asyncio.current_task()
        if self._task is None:
            raise RuntimeError("Deadline must be used inside a task")
        self._cancelling = self._task.cancelling()
        if self._seconds is not None:
            self._handle = asyncio.get_running_loop().call_later(self._seconds, self._fire)
        return self

    def disarm(self) -> None:
        """No deadline from now on (the part that needed one is done)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        assert self._task is not None
        self._fired += 1
        self._task.cancel(f"{self._what}: deadline passed")
        self._handle = asyncio.get_running_loop().call_later(self._repeat, self._fire)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.disarm()
        if not self._fired:
            return
        assert self._task is not None
        for _ in range(self._fired):
            self._task.uncancel()
        if exc_type is asyncio.CancelledError and self._task.cancelling() <= self._cancelling:
            raise TimeoutError(
                f"{self._what}: no answer within {self._seconds}s "
                "(the database is unreachable, or the connection is dead)"
            ) from exc
