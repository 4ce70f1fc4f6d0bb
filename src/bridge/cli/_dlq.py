"""``bridge dlq list|show|replay|purge``: the dead-letter commands of :mod:`bridge.cli`.

    bridge dlq list [--limit N]      oldest first (100 by default)
    bridge dlq show SEQ              one letter: headers and original body
    bridge dlq replay [SEQ ...]      the given letters, or every letter stored now
                                     (``--limit N``: at most N), see bridge.routing.replay
    bridge dlq purge [SEQ ...]       the given letters, or all

``replay`` goes on past the letters it cannot replay (malformed, foreign subject,
unknown sequence) and names each with its reason and what to do; it ends with a
summary line (``--json``: ``replayed``, ``not_replayed``, ``summary``) and fails
(exit 1) when any letter was not replayed.  A replayed letter leaves the list.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TextIO

from bridge.routing.dlq import DeadLetters
from bridge.routing.letter import DeadLetter
from bridge.routing.replay import ReplayReport, replay_many

DEFAULT_LIST_LIMIT = 100


class DlqOutput(Protocol):
    """What the commands print through (``bridge.cli.Output``)."""

    out: TextIO
    json_mode: bool

    def emit(self, data: Any, table: Sequence[Sequence[Any]] | None = None) -> None: ...

    def progress(self, done: int, total: int, label: str = "") -> None: ...


async def dlq_command(
    dlq: DeadLetters, action: str, seqs: Sequence[int], limit: int | None, out: DlqOutput
) -> bool:
    """Run one ``bridge dlq`` action; False when it did not do all it was asked."""
    if action == "list":
        letters = await dlq.list(limit=DEFAULT_LIST_LIMIT if limit is None else limit)
        table: list[list[Any]] = [["seq", "reason", "original_subject", "deliveries", "error"]]
        table += [
            [d.seq, d.reason, d.original_subject, d.deliveries, (d.error_message or "")[:60]]
            for d in letters
        ]
        out.emit([letter_dict(d) for d in letters], table)
    elif action == "show":
        letter = letter_dict(await dlq.show(seqs[0]), body=True)
        out.emit(letter, [["field", "value"], *letter.items()])
    elif action == "replay":
        report = await replay_many(dlq, list(seqs) or None, limit=limit, progress=out.progress)
        out.emit(report.to_dict(), replay_table(report))
        if not out.json_mode:
            out.out.write(report.summary_line() + "\n")
        return report.ok
    else:
        count = 0
        if seqs:
            for index, seq in enumerate(seqs, start=1):
                count += await dlq.purge(seq)
                out.progress(index, len(seqs))
        else:
            count = await dlq.purge(None)
        out.emit({"purged": count}, [["purged"], [count]])
    return True


def replay_table(report: ReplayReport) -> list[list[Any]]:
    """One row per letter, in sequence order: replayed (where to) or the reason it was not."""
    rows: list[tuple[int, str, str]] = []
    for r in report.replayed:
        result = "replayed (duplicate)" if r.duplicate else "replayed"
        detail = f"event {r.event_id} at stream seq {r.stream_seq}"
        if not r.handled:
            detail += f"; the letter is still listed: `bridge dlq purge {r.dlq_seq}`"
        rows.append((r.dlq_seq, result, detail))
    rows += [(n.dlq_seq, n.reason, n.detail) for n in report.not_replayed]
    table: list[list[Any]] = [["dlq_seq", "result", "detail"]]
    table += [list(row) for row in sorted(rows)]
    if report.stopped:
        table.append(["-", "stopped", report.stopped])
    return table if len(table) > 1 else []


def letter_dict(letter: DeadLetter, body: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {
        "seq": letter.seq,
        "reason": letter.reason,
        "original_subject": letter.original_subject,
        "original_seq": letter.original_seq,
        "deliveries": letter.deliveries,
        "error_class": letter.error_class,
        "error_message": letter.error_message,
        "at": letter.at,
    }
    if body:
        data["headers"] = dict(letter.headers)
        data["body"] = letter.data.decode(errors="replace")
    return data
