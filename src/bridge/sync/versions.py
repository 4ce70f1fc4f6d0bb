"""Record versions and last-writer-wins: the rule that makes both databases converge.

Every row carries its version as two columns, ``updated_at`` (microseconds, UTC)
and ``origin`` (the app whose API made the change).  Both sides compare versions
the same way, so whatever order events arrive in, each side keeps the greatest
version it has seen — and since each side sees every version (its own writes
directly, the other side's through the stream), both end with the same row.

- A version is greater when its ``updated_at`` is later; equal timestamps are
  broken by comparing ``origin`` strings (deterministic, the same on both sides).
- A local API write always produces a version greater than the row's current one:
  ``updated_at = max(now, current + 1 µs)`` — so a write made right after applying
  a remote change (or within the same microsecond) never loses to it.
- The receiver stores the sender's ``updated_at`` and ``origin`` verbatim; bumping
  them would create a version the sender never sees, and the sides would diverge.
- Versions from the future are bounded (:mod:`bridge.routing.version_time`, one
  rule): sync handlers dead-letter an incoming ``updated_at`` later than ``now +
  max_clock_skew`` (``future_version``), and a local write never builds on a stored
  version that far ahead (one that got in before that rule, or by SQL):
  :func:`next_updated_at` raises :class:`FutureVersion` instead — never
  ``OverflowError`` at ``datetime.max`` — which the services' API answers with a 409
  naming the record and the repair.  A version ahead but within the skew is still
  written over, at ``current + 1 µs``.

Pure functions, no I/O; :mod:`bridge.sync.lww` applies incoming versions with them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from bridge.config import DEFAULT_MAX_CLOCK_SKEW
from bridge.envelope import format_timestamp
from bridge.routing.version_time import beyond_skew

ONE_MICROSECOND = timedelta(microseconds=1)


class FutureVersion(ValueError):
    """The stored version is more than ``max_clock_skew`` ahead: no local version can follow it."""

    def __init__(self, current: datetime, now: datetime, max_clock_skew: float) -> None:
        super().__init__(
            f"its version {format_timestamp(current)} is more than max_clock_skew "
            f"({max_clock_skew:g}s) ahead of this side's clock ({format_timestamp(now)})"
        )
        self.current = current
        self.now = now


@dataclass(frozen=True, slots=True, order=True)
class Version:
    """``(updated_at, origin)``; ordering is the last-writer-wins order."""

    updated_at: datetime
    origin: str

    def __post_init__(self) -> None:
        if self.updated_at.tzinfo is None:
            raise ValueError("Version.updated_at must be timezone-aware")
        object.__setattr__(self, "updated_at", self.updated_at.astimezone(UTC))


class Verdict(StrEnum):
    """What to do with an incoming version, given the local one."""

    APPLY = "apply"  # incoming is newer (or the record is unknown here)
    SAME = "same"  # this exact version is already stored (nothing to do)
    STALE = "stale"  # the local version is newer: keep it, count the event


_V = TypeVar("_V", "Version", tuple[Any, ...])


def judge(local: _V | None, incoming: _V) -> Verdict:
    """Compare an incoming version with the stored one (``None``: no local row); a
    :class:`Version` or any version tuple (:mod:`bridge.sync.table`)."""
    if local is None or incoming > local:
        return Verdict.APPLY
    if incoming == local:
        return Verdict.SAME
    return Verdict.STALE


def next_updated_at(
    current: datetime | None,
    now: datetime | None = None,
    *,
    max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW,
) -> datetime:
    """The ``updated_at`` of a local write: ``max(now, current + 1 µs)``, strictly increasing.

    Raises :class:`FutureVersion` when ``current`` is later than ``now + max_clock_skew``
    (the new version would be as far ahead, and the peer would refuse it).
    """
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    if current is None:
        return moment
    if current.tzinfo is None:  # asyncpg reads a timestamptz 'infinity' as naive datetime.max
        current = current.replace(tzinfo=UTC)
    if beyond_skew(current, now=moment, max_clock_skew=max_clock_skew):
        raise FutureVersion(current, moment, max_clock_skew)
    floor = current.astimezone(UTC) + ONE_MICROSECOND
    return moment if moment >= floor else floor
