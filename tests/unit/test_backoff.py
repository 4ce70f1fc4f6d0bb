from __future__ import annotations

import random

from bridge.backoff import retry_delay


def test_delay_grows_and_is_capped() -> None:
    rng = random.Random(7)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (10, 10.0), (200, 10.0)]:
        for _ in range(50):
            d = retry_delay(attempt, base=0.5, cap=10.0, rng=rng)
            assert ceiling / 2 <= d <= ceiling


def test_jitter_spreads_relays() -> None:
    rng = random.Random(1)
    delays = {round(retry_delay(5, base=1.0, cap=60.0, rng=rng), 3) for _ in range(20)}
    assert len(delays) > 10
