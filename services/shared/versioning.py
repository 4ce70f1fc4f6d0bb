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

Pure functions, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

ONE_MICROSECOND = timedelta(microseconds=1)


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


def judge(local: Version | None, incoming: Version) -> Verdict:
    """Compare an incoming version with the stored one (``None``: no local row)."""
    if local is None or incoming > local:
        return Verdict.APPLY
    if incoming == local:
        return Verdict.SAME
    return Verdict.STALE


def next_updated_at(current: datetime | None, now: datetime | None = None) -> datetime:
    """The ``updated_at`` of a local write: ``max(now, current + 1 µs)``, strictly increasing."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    if current is None:
        return moment
    floor = current.astimezone(UTC) + ONE_MICROSECOND
    return moment if moment >= floor else floor
