"""Replaying dead letters: where to, under which id, and a batch that goes on.

A replay is run by an operator, usually with admin credentials, on letters that
anyone allowed to publish on the DLQ subject may have written.  So a letter's
headers never choose what the replay does:

- **Target**: always this app's own consume subject (``config.subjects.consume``,
  the subject its durable filters on), in this app's stream (``Nats-Expected-Stream``).
  A letter whose ``x-dlq-original-subject`` names anything else — the peer's
  subject, a ``$JS.API`` call — is refused (:class:`~bridge.errors.ReplayRefusedError`,
  reason ``foreign_subject``) and nothing is published for it.  The worst a forged
  letter can then do is deliver an envelope to this app's own handlers, which the
  letter's author could already do by publishing on the consume subject.
- **Body**: must be an envelope; a ``malformed`` letter is refused (reason
  ``malformed``): inspect it with ``bridge dlq show``, remove it with ``bridge dlq purge``.
- **Id**: :func:`replay_event_id` — a uuid5 of the original event id, the stream
  and the letter's sequence — with ``causation_id`` = the original event id.  The
  same letter always replays under the same id, so replaying it again is a
  duplicate: JetStream drops it inside the duplicate window, the consumer's inbox
  acks it without running the handler beyond it (while the inbox record is kept,
  ``consumer.inbox_retention``).
- **Handled**: after the replay's PubAck the letter is deleted from the stream, so
  it leaves ``bridge dlq list``.  A crash between the two leaves the letter; running
  the replay again publishes a duplicate (see above) and then deletes it.

:func:`replay_many` replays a list of sequences, or every letter stored when it
starts (letters written while it runs — e.g. a replay that failed again — are left
for the next run), and reports each letter it could not replay with its reason.
It stops early only when JetStream is unavailable (nothing can be replayed then).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from bridge.config import BridgeConfig
from bridge.envelope import Envelope
from bridge.errors import DeadLetterNotFoundError, EnvelopeError, PublishError, ReplayRefusedError
from bridge.routing.letter import H_TRUNCATED, DeadLetter

if TYPE_CHECKING:
    from bridge.routing.dlq import DeadLetters

#: Namespace of replay event ids (a fixed, random UUID: never change it, or a replay
#: run again after an upgrade would no longer be recognised as a duplicate).
REPLAY_NAMESPACE = uuid.UUID("5f1d3c1e-9a7b-4e4f-8d2a-6b0c7e21d9a4")
REASON_MALFORMED = "malformed"
REASON_FOREIGN_SUBJECT = "foreign_subject"
REASON_NOT_FOUND = "not_found"
REASON_PUBLISH_REJECTED = "publish_rejected"


def replay_event_id(original_event_id: str, stream: str, dlq_seq: int) -> str:
    """The event id of the replay of dead letter ``dlq_seq`` (deterministic)."""
    return str(uuid.uuid5(REPLAY_NAMESPACE, f"{original_event_id}/{stream}/{dlq_seq}"))


def replay_envelope(letter: DeadLetter, config: BridgeConfig) -> Envelope:
    """The envelope to publish for ``letter`` on ``config.subjects.consume``.

    Raises :class:`~bridge.errors.ReplayRefusedError` when the letter names another
    subject or its body is not an envelope (see module doc).
    """
    consume = config.subjects.consume
    if letter.original_subject != consume:
        raise ReplayRefusedError(
            f"dead letter {letter.seq} names original subject {letter.original_subject!r}, "
            f"not this app's consume subject {consume!r}: refused (forged or misplaced); "
            f"inspect it with `bridge dlq show {letter.seq}`, remove it with "
            f"`bridge dlq purge {letter.seq}`",
            seq=letter.seq,
            reason=REASON_FOREIGN_SUBJECT,
        )
    if H_TRUNCATED in letter.headers:
        raise ReplayRefusedError(
            f"dead letter {letter.seq} holds only the first bytes of a "
            f"{letter.headers[H_TRUNCATED]}-byte body (cut to fit max_payload): the original "
            f"is message {letter.original_seq} of the stream until max_age; republish a "
            f"corrected event from the producer, then `bridge dlq purge {letter.seq}`",
            seq=letter.seq,
            reason=REASON_MALFORMED,
        )
    try:
        original = letter.envelope()
    except EnvelopeError as exc:
        raise ReplayRefusedError(
            f"dead letter {letter.seq} is malformed ({exc}) and cannot be replayed as an "
            f"envelope: inspect it with `bridge dlq show {letter.seq}`, republish a "
            f"corrected event from the producer, then `bridge dlq purge {letter.seq}`",
            seq=letter.seq,
            reason=REASON_MALFORMED,
        ) from exc
    return replace(
        original,
        event_id=replay_event_id(original.event_id, config.stream_name, letter.seq),
        causation_id=original.event_id,
    )


@dataclass(frozen=True, slots=True)
class Replayed:
    """One dead letter replayed: the replay's event id and where it is stored.

    ``duplicate``: JetStream already had this replay (an earlier run published it).
    ``handled``: the letter was removed from the DLQ.
    """

    dlq_seq: int
    event_id: str
    causation_id: str
    stream_seq: int
    duplicate: bool
    handled: bool


@dataclass(frozen=True, slots=True)
class NotReplayed:
    """One dead letter that was not replayed, and why (``reason`` is a REASON_* value)."""

    dlq_seq: int
    reason: str
    detail: str


@dataclass(slots=True)
class ReplayReport:
    """What :func:`replay_many` did; ``stopped`` says why it ended early, if it did."""

    replayed: list[Replayed] = field(default_factory=list)
    not_replayed: list[NotReplayed] = field(default_factory=list)
    stopped: str | None = None

    @property
    def ok(self) -> bool:
        return not self.not_replayed and self.stopped is None

    def summary_line(self) -> str:
        total = len(self.replayed) + len(self.not_replayed)
        line = f"replayed {len(self.replayed)} of {total} dead letters"
        if self.not_replayed:
            line += f"; {len(self.not_replayed)} not replayed"
        if self.stopped:
            line += f"; stopped early: {self.stopped}"
        return line

    def to_dict(self) -> dict[str, Any]:
        return {
            "replayed": [asdict(r) for r in self.replayed],
            "not_replayed": [asdict(r) for r in self.not_replayed],
            "stopped": self.stopped,
            "summary": {
                "letters": len(self.replayed) + len(self.not_replayed),
                "replayed": len(self.replayed),
                "not_replayed": len(self.not_replayed),
            },
        }


Progress = Callable[[int, int], None]


async def replay_many(
    dead_letters: DeadLetters,
    seqs: Sequence[int] | None = None,
    *,
    limit: int | None = None,
    progress: Progress | None = None,
) -> ReplayReport:
    """Replay ``seqs`` (in that order), or every letter stored when it starts (oldest
    first, at most ``limit``); go on past letters that cannot be replayed (module doc)."""
    report = ReplayReport()
    if seqs is not None:
        total = len(seqs)
        targets: AsyncIterator[int | DeadLetter] = _each(seqs)
    else:
        until = await dead_letters.last_seq()
        total = await dead_letters.count()
        if limit is not None:
            total = min(total, limit)
        targets = _letters(dead_letters, until, limit)
    index = 0
    async for target in targets:
        index += 1
        seq = target if isinstance(target, int) else target.seq
        try:
            if isinstance(target, int):
                report.replayed.append(await dead_letters.replay(target))
            else:
                report.replayed.append(await dead_letters.replay_letter(target))
        except ReplayRefusedError as exc:
            report.not_replayed.append(NotReplayed(seq, exc.reason, str(exc)))
        except DeadLetterNotFoundError as exc:
            report.not_replayed.append(NotReplayed(seq, REASON_NOT_FOUND, str(exc)))
        except PublishError as exc:
            if not exc.rejected:  # JetStream unavailable: every other letter would fail too
                report.stopped = str(exc)
                break
            report.not_replayed.append(NotReplayed(seq, REASON_PUBLISH_REJECTED, str(exc)))
        if progress is not None:
            progress(index, max(total, index))
    return report


async def _each(seqs: Sequence[int]) -> AsyncIterator[int | DeadLetter]:
    for seq in seqs:
        yield seq


async def _letters(
    dead_letters: DeadLetters, until: int, limit: int | None
) -> AsyncIterator[int | DeadLetter]:
    # Read one letter at a time (bodies can be large); stop at what was stored at the
    # start, so letters a failing replay writes meanwhile wait for the next run.
    count = 0
    async for letter in dead_letters.letters(until_seq=until):
        if limit is not None and count >= limit:
            return
        count += 1
        yield letter
