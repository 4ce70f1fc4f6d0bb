"""Retry delays: exponential backoff with full jitter (pure, no I/O, no clock).

The ceiling of attempt ``n`` (1-based: the delay after the ``n``-th failure) is
``min(maximum, base * 2 ** (n - 1))``; the delay is drawn uniformly from
``[0, ceiling]`` ("full jitter", as in the AWS architecture blog's comparison).
Full jitter spreads the retries of many rows that failed together — e.g. a whole
batch during a NATS outage — so they do not come back as one thundering herd.

The random source is injectable so tests (and callers that want determinism)
pass their own ``random()``-like callable returning a float in ``[0, 1)``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from bridge.errors import ConfigError

# 2**62 seconds is beyond any sane maximum; capping the exponent keeps the
# multiplication from overflowing to inf for absurd attempt counts.
_MAX_EXPONENT = 62


def backoff_ceiling(attempt: int, *, base: float, maximum: float) -> float:
    """Upper bound of the delay after the ``attempt``-th failure (attempt >= 1)."""
    exponent = min(max(attempt, 1) - 1, _MAX_EXPONENT)
    return float(min(maximum, base * (2**exponent)))


def backoff_delay(
    attempt: int,
    *,
    base: float,
    maximum: float,
    rng: Callable[[], float] = random.random,
) -> float:
    """A full-jitter delay in ``[0, backoff_ceiling(attempt)]`` seconds."""
    return backoff_ceiling(attempt, base=base, maximum=maximum) * rng()


@dataclass(frozen=True, slots=True)
class Backoff:
    """A configured schedule: ``Backoff(0.5, 60.0).delay(3)`` is in ``[0, 2.0]``."""

    base: float
    maximum: float
    rng: Callable[[], float] = field(default=random.random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.base <= 0:
            raise ConfigError(f"backoff base must be greater than zero, got {self.base!r}")
        if self.maximum < self.base:
            raise ConfigError(f"backoff maximum ({self.maximum!r}) must be >= base ({self.base!r})")

    def ceiling(self, attempt: int) -> float:
        return backoff_ceiling(attempt, base=self.base, maximum=self.maximum)

    def delay(self, attempt: int) -> float:
        return backoff_delay(attempt, base=self.base, maximum=self.maximum, rng=self.rng)
