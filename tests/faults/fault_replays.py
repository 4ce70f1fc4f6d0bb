"""The checker's view of dead letters a scenario replayed (``bridge dlq replay``).

A replay publishes the dead-lettered envelope again with a NEW event id and
``causation_id`` = the id it replays (:meth:`bridge.routing.dlq.DeadLetters.replay`), so the
stream holds events no outbox row explains and the original stays ``dead_lettered`` in
the receiver's inbox.  :func:`fold_replays` folds each replay chain (the original event
from an outbox, then each replay of the one before) into its original, and checks:

- every element but the one applied is ``dead_lettered`` with a reason the scenario
  expects to replay (e.g. ``future_version``), and there is a dead letter for it — in the
  stream, or recorded by the scenario when it replayed it (a replay removes the letter
  from the DLQ: ``recorded`` maps its event id to its reason);
- exactly ONE element of the chain is ``processed`` by the receiver: none is a lost
  event, two are an event applied twice;
- every replay traces back to an event of the producer's outbox (nothing made up).

It returns the sides and messages as if the original had been processed directly (the
replay events, their inbox records and the folded dead letters removed), so the usual
accounting of :func:`fault_checker.check` applies unchanged, plus the folded dead letters
by reason, for the result's counts.  Dead letters of events that are not replayed —
injected poison, or anything unexpected — are left for the usual dead-letter check.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # fault_checker imports this module
    from fault_checker import SideState, StreamMessage


class Findings(Protocol):
    """What :class:`fault_checker.Verdict` offers this rule."""

    events_lost: int
    duplicates_applied: int

    def fail(self, text: str) -> None: ...


def fold_replays(
    sides: Sequence[SideState],
    messages: Sequence[StreamMessage],
    reasons: Collection[str],
    verdict: Findings,
    recorded: Mapping[str, str] | None = None,
) -> tuple[list[SideState], list[StreamMessage], Counter[str]]:
    """Fold replay chains into their originals (module doc)."""
    outbox_ids = {row["event_id"] for side in sides for row in side.outbox}
    published = [m for m in messages if m.event_id and ".dlq" not in m.subject]
    parent = {m.event_id: m.causation_id for m in published if m.event_id not in outbox_ids}
    replays = sorted(e for e, cause in parent.items() if e is not None and cause is not None)
    chains: dict[str, list[str]] = {}
    for event_id in replays:
        root, seen = event_id, {event_id}
        while (cause := parent.get(root)) is not None and cause not in seen:
            root = cause
            seen.add(root)
        if root not in outbox_ids:
            verdict.fail(f"replayed event {event_id} traces back to no outbox event ({root})")
            continue
        chains.setdefault(root, [root]).append(event_id)
    status: dict[str, str] = {}
    for side in sides:
        for row in side.inbox:
            status.setdefault(row["event_id"], row["status"])
    letters = {m.event_id: m for m in messages if ".dlq" in m.subject and m.event_id is not None}
    folded: Counter[str] = Counter()
    dropped_letters: set[int] = set()
    applied: set[str] = set()
    for root, chain in chains.items():
        done = [e for e in chain if status.get(e) == "processed"]
        if not done:
            verdict.events_lost += 1
            verdict.fail(f"replays of {root} never applied: {[status.get(e) for e in chain]}")
        elif len(done) > 1:
            verdict.duplicates_applied += len(done) - 1
            verdict.fail(f"event {root} applied {len(done)} times through replays: {done}")
        else:
            applied.add(root)
        for event_id in chain:
            if event_id in done:
                continue
            letter = letters.get(event_id)
            reason = letter.reason if letter is not None else (recorded or {}).get(event_id)
            if status.get(event_id) != "dead_lettered" or reason is None:
                verdict.fail(f"{event_id} (chain of {root}) was replayed but not dead-lettered")
            elif reason not in reasons:
                verdict.fail(f"{event_id} replayed after a {reason!r} dead letter")
            else:
                folded[reason] += 1
                if letter is not None:
                    dropped_letters.add(letter.seq)
    replay_ids = {e for chain in chains.values() for e in chain[1:]}
    kept = [m for m in messages if m.event_id not in replay_ids and m.seq not in dropped_letters]
    states = [_fold_inbox(side, replay_ids, applied) for side in sides]
    return states, kept, folded


def _fold_inbox(side: SideState, replay_ids: set[str], applied: set[str]) -> SideState:
    inbox: list[dict[str, Any]] = []
    for row in side.inbox:
        if row["event_id"] in replay_ids:
            continue
        applied_here = row["event_id"] in applied  # applied once, through its replay
        inbox.append({**row, "status": "processed"} if applied_here else row)
    return replace(side, inbox=inbox)
