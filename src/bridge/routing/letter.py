"""A stored dead letter: its headers, how long it is kept, and how to read it back.

A dead letter is the original message (body and headers, unchanged) published on
this app's DLQ subject (``{app}.sync.dlq``, in the same stream as both directions)
with ``x-dlq-*`` headers saying why.  Its ``Nats-Msg-Id`` is ``dlq-{stream}-{seq}``
of the original, so publishing the same dead letter twice stores it once inside
the duplicate window.  The headers are written by whoever may publish on the DLQ
subject — normally the app, but nothing stops a client with that permission from
writing any header: they describe a letter, they are never an instruction
(:mod:`bridge.routing.replay` replays only to this app's own consume subject).

**Retention** (``BridgeConfig.dlq_retention``):

- ``"never"`` (default): each dead letter carries ``Nats-TTL: never`` and the stream
  is provisioned with ``allow_msg_ttl`` (nats-server >= 2.11), so the stream's
  ``max_age`` does not remove it: it stays until it is replayed (which removes it)
  or purged.  Measured with nats-server 2.15.1: a never-TTL message outlives
  ``max_age``, but not ``max_msgs`` / ``max_bytes`` — a full stream (discard old)
  drops its oldest messages, dead letters first.  A finite ``Nats-TTL`` longer than
  ``max_age`` does not extend it, which is why there is no duration setting.
- ``"stream"``: no TTL header; dead letters age out with the stream like any message.

A stream provisioned without ``allow_msg_ttl`` refuses ``Nats-TTL`` (JetStream error
10166); :meth:`bridge.routing.dlq.DeadLetters.publish` then stores the letter without it and
logs an error naming the fix, so a missing re-provisioning never blocks dead letters.

:func:`oldest_letter_age` reads how long the oldest letter has waited (the
``bridge_dead_letters_oldest_age_seconds`` gauge, ``bridge status``) from the
server's store time, which no header can forge.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from nats.js.errors import APIError

from bridge.config import BridgeConfig
from bridge.envelope import TRACEPARENT_HEADER, Envelope, parse_timestamp, utcnow
from bridge.errors import EnvelopeError, PublishError

H_REASON = "x-dlq-reason"
H_DELIVERIES = "x-dlq-deliveries"
H_ERROR_CLASS = "x-dlq-error-class"
H_ERROR_MESSAGE = "x-dlq-error-message"
H_ORIGINAL_SUBJECT = "x-dlq-original-subject"
H_ORIGINAL_STREAM = "x-dlq-original-stream"
H_STREAM_SEQ = "x-dlq-stream-seq"
H_ORIGINAL_MSG_ID = "x-dlq-original-msg-id"
H_APP = "x-dlq-app"
H_AT = "x-dlq-at"
#: Set on a letter whose body was cut to fit ``max_payload``: the original body's size.
#: The original message stays in the stream (``x-dlq-stream-seq``) until ``max_age``.
H_TRUNCATED = "x-dlq-truncated"
TTL_HEADER = "Nats-TTL"
TTL_NEVER = "never"
ERROR_MESSAGE_LIMIT = 1000
#: JetStream error codes: per-message TTL disabled on the stream; no message found.
TTL_DISABLED = 10166
NO_MESSAGE_FOUND = 10037
# Headers the server adds to a direct-get reply; they are not part of the dead letter.
SERVER_HEADERS = frozenset(
    {"Nats-Stream", "Nats-Subject", "Nats-Sequence", "Nats-Time-Stamp", "Nats-Num-Pending"}
)

#: A JetStream management request that answers ``None`` where it cannot be made
#: (no permission, not connected) — e.g. ``BridgeStatus._management`` or ``JetStreamApi.request``.
ManagementRequest = Callable[[str, dict[str, Any] | None], Awaitable[dict[str, Any] | None]]


def dead_letter_msg_id(stream: str, seq: int) -> str:
    """``Nats-Msg-Id`` of the dead letter of message ``seq`` in ``stream``."""
    return f"dlq-{stream}-{seq}"


def header_safe(text: str, limit: int = ERROR_MESSAGE_LIMIT) -> str:
    """``text`` on one line, at most ``limit`` characters (NATS header values are lines)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def retention_headers(config: BridgeConfig) -> dict[str, str]:
    """Headers that make a dead letter stay as long as ``config.dlq_retention`` says."""
    return {TTL_HEADER: TTL_NEVER} if config.dlq_retention == "never" else {}


def ttl_refused(exc: PublishError) -> bool:
    """True when JetStream refused a publish because the stream has no ``allow_msg_ttl``."""
    cause = exc.__cause__
    return isinstance(cause, APIError) and cause.err_code == TTL_DISABLED


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One stored dead letter (``seq`` is its sequence in the stream)."""

    seq: int
    reason: str
    original_subject: str
    original_seq: int
    deliveries: int
    error_class: str
    error_message: str
    data: bytes
    headers: dict[str, str]
    at: str

    def envelope(self) -> Envelope:
        """The original envelope; raises EnvelopeError for a ``malformed`` dead letter."""
        return Envelope.from_bytes(
            self.data,
            {TRACEPARENT_HEADER: self.headers[TRACEPARENT_HEADER]}
            if TRACEPARENT_HEADER in self.headers
            else None,
        )

    @classmethod
    def from_stored(cls, seq: int, data: bytes, headers: Mapping[str, str]) -> DeadLetter:
        kept = {k: v for k, v in headers.items() if k not in SERVER_HEADERS}
        return cls(
            seq=seq,
            reason=kept.get(H_REASON, ""),
            original_subject=kept.get(H_ORIGINAL_SUBJECT, ""),
            original_seq=_int(kept.get(H_STREAM_SEQ)),
            deliveries=_int(kept.get(H_DELIVERIES)),
            error_class=kept.get(H_ERROR_CLASS, ""),
            error_message=kept.get(H_ERROR_MESSAGE, ""),
            data=data,
            headers=kept,
            at=kept.get(H_AT, ""),
        )


def _int(value: str | None) -> int:
    # A hand-written or forged letter may carry anything here; it must still list.
    try:
        return int(value or 0)
    except ValueError:
        return 0


async def oldest_letter_age(
    request: ManagementRequest, config: BridgeConfig, *, now: datetime | None = None
) -> float | None:
    """Seconds the oldest dead letter of this app has been stored; ``0.0`` when there
    is none; ``None`` when it cannot be read (``request`` answered ``None`` — no
    permission, not connected — or the server answered another error)."""
    reply = await request(
        f"STREAM.MSG.GET.{config.stream_name}",
        {"seq": 1, "next_by_subj": config.subjects.dlq},
    )
    if reply is None:
        return None
    error = reply.get("error")
    if error:
        return 0.0 if error.get("err_code") == NO_MESSAGE_FOUND else None
    try:
        stored = parse_timestamp(str(reply["message"]["time"]))
    except (KeyError, TypeError, EnvelopeError):
        return None
    return max(0.0, ((now or utcnow()) - stored).total_seconds())
