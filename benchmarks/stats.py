"""Pure arithmetic of the benchmarks: percentiles, median-of-runs ratios, lost/duplicated.

Every ratio the harness reports comes from :func:`median_ratio` over runs in which the
baseline and the measured thing alternate (:func:`interleaved`), so a slow moment of
the shared machine hits both sides of at least one pair instead of deciding the figure.
Nothing here does I/O; ``tests/unit/test_bench_stats.py`` checks it.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

Line = tuple[str, float, str]


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100) of ``values``; raises on an empty list.

    Nearest rank, not interpolation: p99 of 2500 samples is the 2475th smallest, a value
    that was actually measured.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= pct <= 100:
        raise ValueError(f"percentile must be within 0..100, got {pct}")
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class RatioRuns:
    """``ours / baseline`` over several runs; the reported figure is the median pair's."""

    pairs: tuple[tuple[float, float], ...]  # (baseline, ours) per run, in run order

    @property
    def ratios(self) -> list[float]:
        return [ours / base for base, ours in self.pairs]

    @property
    def median(self) -> float:
        return statistics.median(self.ratios)

    @property
    def median_pair(self) -> tuple[float, float]:
        """The (baseline, ours) run whose ratio is the median (the lower middle for an
        even count), so the absolute figures printed beside the ratio belong to it."""
        order = sorted(range(len(self.pairs)), key=lambda i: self.ratios[i])
        return self.pairs[order[(len(order) - 1) // 2]]

    @property
    def spread(self) -> float:
        """Highest minus lowest ratio: how much the runs disagreed."""
        return max(self.ratios) - min(self.ratios)


def median_ratio(pairs: Iterable[tuple[float, float]]) -> RatioRuns:
    """Wrap (baseline, ours) runs; at least one run, every baseline positive."""
    runs = tuple((float(b), float(o)) for b, o in pairs)
    if not runs:
        raise ValueError("median_ratio needs at least one run")
    if any(base <= 0 for base, _ in runs):
        raise ValueError(f"a baseline run measured nothing: {runs}")
    return RatioRuns(runs)


def ratio_lines(
    name: str, runs: RatioRuns, *, base: str, ours: str | None, unit: str
) -> list[Line]:
    """The standard lines of one ratio: the absolute figures of the median run (``ours``
    left out when another ratio already printed it), the median ratio, and the spread
    and count of the runs behind it."""
    base_value, ours_value = runs.median_pair
    lines: list[Line] = [(base, round(base_value, 1), unit)]
    if ours is not None:
        lines.append((ours, round(ours_value, 1), unit))
    return [
        *lines,
        (name, round(runs.median, 3), "ratio"),
        (f"{name}_spread", round(runs.spread, 3), f"ratio over {len(runs.pairs)} runs"),
    ]


async def interleaved(
    runs: int, *measures: Callable[[], Awaitable[float]]
) -> list[tuple[float, ...]]:
    """Run every measure once per round, in order, ``runs`` rounds; one tuple per round."""
    if runs < 1:
        raise ValueError("runs must be >= 1")
    rounds: list[tuple[float, ...]] = []
    for _ in range(runs):
        rounds.append(tuple([await measure() for measure in measures]))
    return rounds


class CpuMeter:
    """This process's CPU time over wall time in the spans measured with :meth:`span`.

    About 100 % means the span was bound by this process's one core (Python is
    single-threaded here); well below means it waited — on the servers, the other
    processes or the machine.  :attr:`shares` holds one figure per span.
    """

    def __init__(self) -> None:
        self.shares: list[float] = []

    @contextlib.contextmanager
    def span(self) -> Iterator[None]:
        cpu, wall = time.process_time(), time.perf_counter()
        yield
        elapsed = max(time.perf_counter() - wall, 1e-9)
        self.shares.append((time.process_time() - cpu) / elapsed)

    def line(self, name: str) -> Line:
        """``name`` with the median share in percent (nan when nothing was measured)."""
        share = statistics.median(self.shares) if self.shares else math.nan
        return (name, round(share * 100, 1), "% of one core")


@dataclass(frozen=True, slots=True)
class Delivery:
    """What reached the stream against what was committed, by event id."""

    expected: int
    lost: int  # committed, never stored
    duplicated: int  # event ids stored more than once
    unexpected: int  # stored ids nobody committed (another run's, or garbage)


def check_delivery(committed: Iterable[str], stored: Counter[str]) -> Delivery:
    """Compare the committed event ids with a count of stored messages per event id."""
    expected = set(committed)
    return Delivery(
        expected=len(expected),
        lost=sum(1 for event_id in expected if stored[event_id] == 0),
        duplicated=sum(1 for event_id, count in stored.items() if count > 1),
        unexpected=sum(1 for event_id in stored if event_id not in expected),
    )


def latency_lines(
    prefix: str, committed: dict[str, float], arrived: dict[str, float]
) -> list[Line]:
    """p50/p99 (ms) of ``arrived - committed`` per event id, and how many arrived."""
    ms = [(arrived[i] - at) * 1000 for i, at in committed.items() if i in arrived]
    if not ms:
        return [(f"{prefix}_received", 0.0, f"of {len(committed)}")]
    return [
        (f"{prefix}_p50_ms", round(percentile(ms, 50), 2), "ms"),
        (f"{prefix}_p99_ms", round(percentile(ms, 99), 2), "ms"),
        (f"{prefix}_received", float(len(ms)), f"of {len(committed)}"),
    ]
