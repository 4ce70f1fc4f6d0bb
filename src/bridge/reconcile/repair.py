"""The pure parts of a reconciliation pass: narrowing ranges, the repair rule, the report.

:func:`narrow`: a range whose (count, digest) is equal on both sides is in sync; a
differing range becomes a *leaf* when neither side holds more than ``leaf_rows`` rows
in it; otherwise it is cut into sub-ranges next (:class:`Split`) — by the side that
holds more rows in it, so each part holds at most a sixteenth of them
(:meth:`bridge.reconcile._digest.ModelDigests.split`).

:func:`decide` — **the repair rule**, per differing row:

- present on one side only → that side re-emits it (a hard ``DELETE`` that
  bypassed the API is restored: deletes are tombstones, a missing row is a loss);
- both present, different versions ``(updated_at, origin)`` → the side with the
  greater last-writer-wins version re-emits (later ``updated_at``; equal
  timestamps: greater ``origin``, :mod:`bridge.sync.versions`);
- same version, different content (a hand edit that did not bump ``updated_at``)
  → the side named by the row's ``origin`` re-emits, and the receiver overwrites
  its copy because the event's producer is the version's origin
  (:mod:`bridge.sync.lww`).  An ``origin`` naming neither app is counted as
  *unresolved* and left alone.

No I/O here (:mod:`bridge.reconcile.reconciler` runs the pass).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Protocol

from bridge.errors import ReconcileError
from bridge.keys import Key
from bridge.reconcile._digest import KeyRange, RangeDigest, RowDigest


@dataclass(frozen=True, slots=True)
class Split:
    """A differing range to cut next, the larger of its row counts and which side
    cuts it (the one with more rows)."""

    range: KeyRange
    count: int
    by_peer: bool


def narrow(
    local: Sequence[RangeDigest], peer: Sequence[RangeDigest], *, leaf_rows: int
) -> tuple[list[Split], list[RangeDigest]]:
    """Differing ranges to cut next, and differing leaves.

    ``local`` and ``peer`` list the same ranges in the same order.  A returned leaf
    carries the larger of the two row counts (what its ``rows`` reply costs).
    """
    splits: list[Split] = []
    leaves: list[RangeDigest] = []
    for mine, theirs in zip(local, peer, strict=True):
        if mine.range != theirs.range:
            raise ReconcileError("peer answered for other ranges than asked")
        if (mine.count, mine.digest) == (theirs.count, theirs.digest):
            continue
        most = max(mine.count, theirs.count)
        if most <= leaf_rows:
            leaves.append(RangeDigest(mine.range, most, ""))
        else:
            splits.append(Split(mine.range, most, by_peer=theirs.count > mine.count))
    return splits, leaves


@dataclass(frozen=True, slots=True)
class Repairs:
    """Keys to re-emit: by this app (``to_peer``), by the peer (``from_peer``)."""

    to_peer: tuple[Key, ...] = ()
    from_peer: tuple[Key, ...] = ()
    unresolved: tuple[Key, ...] = ()


def decide(
    local: Sequence[RowDigest], peer: Sequence[RowDigest], *, local_app: str, peer_app: str
) -> Repairs:
    """Apply the repair rule (module doc) to the rows of the same ranges on both sides."""
    mine = {r.key: r for r in local}
    theirs = {r.key: r for r in peer}
    to_peer: list[Key] = []
    from_peer: list[Key] = []
    unresolved: list[Key] = []
    for row_id in sorted(mine.keys() | theirs.keys()):
        a, b = mine.get(row_id), theirs.get(row_id)
        if a is not None and b is not None and a.digest == b.digest:
            continue
        if b is None:
            to_peer.append(row_id)
        elif a is None:
            from_peer.append(row_id)
        elif a.version != b.version:
            (to_peer if a.version > b.version else from_peer).append(row_id)
        elif a.origin == local_app:
            to_peer.append(row_id)
        elif a.origin == peer_app:
            from_peer.append(row_id)
        else:
            unresolved.append(row_id)
    return Repairs(tuple(to_peer), tuple(from_peer), tuple(unresolved))


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    """What one pass did.  ``repaired_*`` count re-emitted rows (outbox rows written)."""

    peer: str
    started_at: datetime
    finished_at: datetime
    duration_seconds: float
    resources: tuple[str, ...]
    ranges_compared: int
    rows_compared: int
    repaired_to_peer: int
    repaired_from_peer: int
    unresolved: int
    requests: int
    bytes_sent: int
    bytes_received: int
    error: str | None = None

    @property
    def rows_repaired(self) -> int:
        return self.repaired_to_peer + self.repaired_from_peer

    @property
    def bytes_transferred(self) -> int:
        return self.bytes_sent + self.bytes_received

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["started_at"] = self.started_at.isoformat()
        data["finished_at"] = self.finished_at.isoformat()
        data["resources"] = list(self.resources)
        data["rows_repaired"] = self.rows_repaired
        data["bytes_transferred"] = self.bytes_transferred
        return data


class ReconcileObserver(Protocol):
    """Told about every finished pass (metrics)."""

    def reconcile_done(self, report: ReconcileReport) -> None: ...
