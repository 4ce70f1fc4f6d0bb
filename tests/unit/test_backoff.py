"""Exponential backoff with full jitter: ceilings, bounds and the jitter's spread."""

from __future__ import annotations

import random

import pytest

from bridge._support.backoff import Backoff, backoff_ceiling, backoff_delay
from bridge.errors import ConfigError


def test_ceiling_doubles_per_attempt_and_caps_at_maximum() -> None:
    ceilings = [backoff_ceiling(n, base=0.5, maximum=10.0) for n in range(1, 8)]
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_attempt_below_one_is_treated_as_first() -> None:
    assert backoff_ceiling(0, base=0.5, maximum=10.0) == 0.5
    assert backoff_ceiling(-3, base=0.5, maximum=10.0) == 0.5


def test_huge_attempt_counts_do_not_overflow() -> None:
    assert backoff_ceiling(10_000, base=0.5, maximum=60.0) == 60.0
    assert backoff_delay(10_000, base=0.5, maximum=60.0, rng=lambda: 0.999) < 60.0


@pytest.mark.parametrize("draw", [0.0, 0.25, 0.999999])
def test_delay_is_ceiling_times_the_draw(draw: float) -> None:
    assert backoff_delay(4, base=1.0, maximum=100.0, rng=lambda: draw) == pytest.approx(8.0 * draw)


def test_full_jitter_spreads_delays_over_the_whole_range() -> None:
    schedule = Backoff(1.0, 60.0, rng=random.Random(7).random)
    delays = [schedule.delay(5) for _ in range(2000)]  # ceiling 16 s
    assert all(0.0 <= d <= 16.0 for d in delays)
    # Full jitter, not "ceiling +/- a little": both ends of the range are used.
    assert min(delays) < 1.0
    assert max(delays) > 15.0
    assert 6.0 < sum(delays) / len(delays) < 10.0


def test_schedule_validates_its_bounds() -> None:
    with pytest.raises(ConfigError):
        Backoff(0.0, 1.0)
    with pytest.raises(ConfigError):
        Backoff(2.0, 1.0)
    assert Backoff(0.5, 60.0).ceiling(3) == 2.0
