"""The token bucket paces work to ``rate`` items per second (fake clock, no real sleeps),
and backfill options are validated at construction."""

from __future__ import annotations

import pytest

from bridge._support.rate_limit import TokenBucket
from bridge.errors import ConfigError
from bridge.reconcile.backfill import BackfillOptions


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


async def test_burst_passes_then_work_is_paced_to_the_rate() -> None:
    t = FakeTime()
    bucket = TokenBucket(100.0, clock=t.clock, sleep=t.sleep)
    assert await bucket.take(100) == 0.0  # one second's worth is saved up
    assert await bucket.take(50) == pytest.approx(0.5)
    assert await bucket.take(250) == pytest.approx(2.5)  # larger than the burst: waits for all
    # 400 items in 3 simulated seconds = burst (100) + rate * 3 s (300).
    assert t.now - 100.0 == pytest.approx(3.0)


async def test_idle_time_refills_only_up_to_the_burst() -> None:
    t = FakeTime()
    bucket = TokenBucket(10.0, burst=20.0, clock=t.clock, sleep=t.sleep)
    await bucket.take(20)
    t.now += 3600.0  # an hour idle saves no more than the burst
    assert await bucket.take(20) == 0.0
    assert await bucket.take(5) == pytest.approx(0.5)
    assert await bucket.take(0) == 0.0


def test_invalid_rate_and_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="rate"):
        TokenBucket(0)
    with pytest.raises(ConfigError, match="batch_size"):
        BackfillOptions(batch_size=0)
    with pytest.raises(ConfigError, match="rate"):
        BackfillOptions(rate=-1.0)
    with pytest.raises(ConfigError, match="max_pending"):
        BackfillOptions(max_pending=-5)
    with pytest.raises(ConfigError, match="run name"):
        BackfillOptions(run_name="")
    assert BackfillOptions().batch_size == 500 and BackfillOptions().max_pending == 10_000
