"""The checker's record rule when both sides write the same records concurrently.

With a shared load (:mod:`fault_load`, ``shared=True``) the writes of one record are
not a linear history, so "the newest acknowledged write is the final state" does not
hold: a write on B made before B received A's concurrent write may lose to it, and
must, when A's version is greater — that is last-writer-wins.  What must hold instead,
per record, with a version being ``(updated_at, origin)`` compared as the services do
(:mod:`bridge.sync.versions`):

- **a write acknowledged after its side applied version X never loses to X**: every
  acked update whose side had applied X before it (``applied_before``, read just before
  the write) got a version greater than X, and the final row's version is at least the
  write's, so the record never ends at X (nor at anything older);
- **no acknowledged version is lost**: the final version is at least every acked
  write's version (last-writer-wins keeps the greatest one it has seen, and each side
  sees every version);
- **the final row is a write's row**: it equals the answer of the acked write with the
  greatest version, or — only when its version is greater still — an indeterminate
  write's request (recognisable by the fields it set).

Rows no acknowledged create explains are checked as in :mod:`fault_checker` (phantoms).
"""

from __future__ import annotations

from typing import Any, Protocol

from fault_history import History, Write, matches

Version = tuple[str, str]


class Findings(Protocol):
    """What :class:`fault_checker.Verdict` offers this rule."""

    events_lost: int

    def fail(self, text: str) -> None: ...


def version_of(values: dict[str, Any]) -> Version:
    """``(updated_at, origin)``: wire timestamps (fixed width, UTC) sort as they compare."""
    return (str(values["updated_at"]), str(values["origin"]))


def check_records_lww(
    history: History, rows: dict[str, dict[str, dict[str, Any]]], verdict: Findings
) -> set[tuple[str, str]]:
    """Check every record with an acked write (module doc); return the records checked."""
    checked: set[tuple[str, str]] = set()
    for (resource, record_id), writes in history.records().items():
        acked = [w for w in writes if w.outcome == "acked" and w.response is not None]
        if not acked:
            continue
        checked.add((resource, record_id))
        for write in acked:
            _check_floor(write, verdict)
        row = rows[resource].get(record_id)
        if row is None:
            verdict.events_lost += 1
            verdict.fail(f"lost: {resource} {record_id} has acked writes but no row")
            continue
        final = version_of(row)
        lost = [w for w in acked if version_of(w.response or {}) > final]
        for write in lost:
            verdict.events_lost += 1
            seen = write.applied_before
            what = (
                f"the version {version_of(seen)} its side had applied before acknowledging it"
                if seen is not None and version_of(seen) == final
                else f"the older version {final}"
            )
            verdict.fail(
                f"lost: acked {write.kind} #{write.seq} on {write.app} of {resource} "
                f"{record_id} (version {version_of(write.response or {})}) lost to {what}"
            )
        if lost:
            continue
        newest = max(acked, key=lambda w: version_of(w.response or {}))
        if final == version_of(newest.response or {}):
            if not matches(row, newest.response or {}):
                verdict.events_lost += 1
                verdict.fail(
                    f"lost: {resource} {record_id} has the version of acked write "
                    f"#{newest.seq} but not its content: {row} vs {newest.response}"
                )
            continue
        maybe = [w for w in writes if w.outcome == "indeterminate"]
        if not any(matches(row, w.request) for w in maybe):
            verdict.fail(
                f"{resource} {record_id} ends at version {final}, newer than every acked "
                f"write and no indeterminate write explains it: {row}"
            )
    return checked


def _check_floor(write: Write, verdict: Findings) -> None:
    """An update's version is greater than what its side had applied before it."""
    seen = write.applied_before
    if seen is None or write.response is None:
        return
    if version_of(write.response) <= version_of(seen):
        verdict.fail(
            f"write #{write.seq} on {write.app} of {write.resource} {write.record_id} was "
            f"acknowledged after its side applied {version_of(seen)} but got version "
            f"{version_of(write.response)}, not greater"
        )
