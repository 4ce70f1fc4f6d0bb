"""Retry delays for the relay: capped exponential backoff with "equal jitter".

``delay(n) = d/2 + uniform(0, d/2)`` where ``d = min(cap, base * 2**(n-1))``: the
delay grows with every attempt (so a broker outage is not hammered) and the jitter
keeps many relays from retrying in lock-step, while never dropping to ~0 like full
jitter can.
"""

from __future__ import annotations

import random


def retry_delay(
    attempt: int, *, base: float, cap: float, rng: random.Random | None = None
) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based)."""
    exponent = min(max(attempt, 1) - 1, 62)  # bounded: 2**62 * base overflows nothing
    ceiling = min(cap, base * (2.0**exponent))
    uniform = (rng or random).uniform
    return ceiling / 2 + uniform(0.0, ceiling / 2)
