"""A token bucket: paces bulk work (backfill) to a number of items per second.

Contract: :meth:`TokenBucket.take` removes ``n`` tokens and, when the bucket runs
into debt, sleeps until the debt is repaid at ``rate`` tokens per second — so over
any stretch of time no more than ``burst + rate * seconds`` items pass.  Taking more
than ``burst`` at once is allowed (a batch larger than the burst); the caller then
waits for the whole batch.  The sleep is cancellable; a cancelled wait keeps the
debt (the items were taken).  Clock and sleep are injectable for tests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from bridge.errors import ConfigError


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up (default: one second's worth)."""

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate <= 0:
            raise ConfigError(f"rate must be > 0 items per second, got {rate!r}")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else rate)
        if self.burst <= 0:
            raise ConfigError(f"burst must be > 0, got {burst!r}")
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.burst
        self._last = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    async def take(self, n: float) -> float:
        """Take ``n`` tokens, sleeping while in debt; returns the seconds slept."""
        if n <= 0:
            return 0.0
        self._refill()
        self._tokens -= n
        if self._tokens >= 0:
            return 0.0
        wait = -self._tokens / self.rate
        await self._sleep(wait)
        self._refill()
        return wait
