"""Last-writer-wins: ordering, tie-break, strictly increasing local versions (pure)."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta, timezone

import pytest

from bridge.sync.versions import (
    ONE_MICROSECOND,
    Verdict,
    Version,
    judge,
    next_updated_at,
)

T0 = datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)


def test_later_timestamp_wins_whatever_the_origin() -> None:
    older = Version(T0, "system_b")
    newer = Version(T0 + ONE_MICROSECOND, "system_a")
    assert judge(older, newer) is Verdict.APPLY
    assert judge(newer, older) is Verdict.STALE


def test_equal_timestamps_are_broken_by_origin_on_both_sides() -> None:
    a, b = Version(T0, "system_a"), Version(T0, "system_b")
    # Each side holds its own version and receives the other's: both keep system_b's.
    assert judge(a, b) is Verdict.APPLY
    assert judge(b, a) is Verdict.STALE


def test_same_version_and_unknown_record() -> None:
    assert judge(Version(T0, "x"), Version(T0, "x")) is Verdict.SAME
    assert judge(None, Version(T0, "x")) is Verdict.APPLY


def test_timezones_are_normalised() -> None:
    plus2 = T0.astimezone(timezone(timedelta(hours=2)))
    assert Version(plus2, "a") == Version(T0, "a")
    with pytest.raises(ValueError):
        Version(T0.replace(tzinfo=None), "a")


def test_any_arrival_order_converges_to_the_maximum() -> None:
    rng = random.Random(7)
    versions = [
        Version(T0 + ONE_MICROSECOND * rng.randint(0, 3), rng.choice(["system_a", "system_b"]))
        for _ in range(6)
    ]
    finals = set()
    for order in itertools.permutations(versions):
        local: Version | None = None
        for incoming in order:
            if judge(local, incoming) is Verdict.APPLY:
                local = incoming
        finals.add(local)
    assert finals == {max(versions)}


def test_next_updated_at_is_strictly_increasing() -> None:
    assert next_updated_at(None, T0) == T0
    assert next_updated_at(T0 - timedelta(seconds=1), T0) == T0
    # A clock that did not advance (or went back) still yields a newer version.
    assert next_updated_at(T0, T0) == T0 + ONE_MICROSECOND
    assert next_updated_at(T0, T0 - timedelta(seconds=5)) == T0 + ONE_MICROSECOND
    current = T0
    for _ in range(100):
        following = next_updated_at(current, T0)
        assert following > current
        current = following
