"""One JetStream delivery, seen through a small Protocol, and what became of it.

:class:`Delivery` is the seam between the consumers (which receive nats-py
messages) and :class:`~bridge.inbox.processor.InboxProcessor` (which decides what to do):
the processor only needs the body, headers, where the message sits in the stream
and how often it was delivered, plus the four JetStream acknowledgements.
Fault-injection tests implement it with plain objects; production wraps a
:class:`nats.aio.msg.Msg` in :class:`NatsDelivery`.

Acknowledgement vocabulary (JetStream):

- ``ack()``: done, never redeliver.
- ``nak(delay)``: redeliver after ``delay`` seconds (``None``: at once).
- ``term()``: never redeliver (used only after a dead letter was stored).
- ``in_progress()``: still working; resets the server's ack-wait timer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

from nats.aio.msg import Msg

from bridge.errors import EnvelopeError


class Outcome(StrEnum):
    """What the processor did with one delivery."""

    ACKED = "acked"  # handler ran and its transaction committed; acked
    DUPLICATE = "duplicate"  # event already processed (inbox hit); acked without running
    RETRIED = "retried"  # NAKed with a delay (or left un-acked); the server redelivers
    DEAD_LETTERED = "dead_lettered"  # stored in the DLQ, then terminated


class Received(Protocol):
    """What is known about a stored message: body, headers, where it sits, deliveries."""

    @property
    def data(self) -> bytes: ...

    @property
    def headers(self) -> Mapping[str, str] | None: ...

    @property
    def subject(self) -> str: ...

    @property
    def stream(self) -> str: ...

    @property
    def stream_seq(self) -> int: ...

    @property
    def num_delivered(self) -> int: ...


@runtime_checkable
class Delivery(Received, Protocol):
    """A message delivered by a JetStream consumer (see module doc for the acks)."""

    async def ack(self) -> None: ...

    async def nak(self, delay: float | None = None) -> None: ...

    async def term(self) -> None: ...

    async def in_progress(self) -> None: ...


#: Tokens of a JetStream ack subject: ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.
#: <cseq>.<ts>.<pending>`` (9), or with ``<domain>.<account hash>`` after ``ACK`` and a
#: random token at the end (12; 11 from older servers).  Same rule as nats-py's.
_V1_TOKENS = 9
_V2_MIN_TOKENS = 11


def ack_subject_position(reply: str | None, subject: str = "") -> tuple[str, int, int]:
    """``(stream, stream sequence, delivery count)`` from a JetStream ack subject.

    Only the three fields the inbox uses, parsed with one ``split`` (nats-py's
    ``Msg.metadata`` also builds a ``datetime`` and two dataclasses per message, a
    measurable share of a consumer's per-message cost).  Raises
    :class:`~bridge.errors.EnvelopeError` when ``reply`` is not such a subject (not a
    JetStream delivery) or its counts are not unsigned 64-bit decimals.
    """
    tokens = reply.split(".") if reply else []
    count = len(tokens)
    if count >= 2 and tokens[0] == "$JS" and tokens[1] == "ACK":
        if count == _V1_TOKENS:
            stream, delivered, seq = tokens[2], tokens[4], tokens[5]
        elif count >= _V2_MIN_TOKENS:
            stream, delivered, seq = tokens[4], tokens[6], tokens[7]
        else:
            stream = delivered = seq = ""
        if stream and _is_count(delivered) and _is_count(seq):
            return stream, int(seq), int(delivered)
    raise EnvelopeError(
        f"message on {subject!r} is not a JetStream delivery (reply {str(reply)[:200]!r})"
    )


def _is_count(token: str) -> bool:
    # ASCII digits only (str.isdigit also accepts other scripts' digits), at most 20
    return 0 < len(token) <= 20 and token.isascii() and token.isdigit()


class NatsDelivery:
    """:class:`Delivery` over a nats-py :class:`~nats.aio.msg.Msg`.

    The stream name, stream sequence and delivery count come from the JetStream
    ack-reply subject (:func:`ack_subject_position`), which is present for pull and
    push deliveries alike.  Construction raises :class:`~bridge.errors.EnvelopeError`
    for a message without that reply subject (not a JetStream delivery).
    """

    __slots__ = ("_msg", "num_delivered", "stream", "stream_seq")

    def __init__(self, msg: Msg) -> None:
        self._msg = msg
        self.stream, self.stream_seq, self.num_delivered = ack_subject_position(
            msg.reply, msg.subject
        )

    @property
    def msg(self) -> Msg:
        return self._msg

    @property
    def data(self) -> bytes:
        return self._msg.data

    @property
    def headers(self) -> Mapping[str, str] | None:
        return self._msg.headers

    @property
    def subject(self) -> str:
        return self._msg.subject

    async def ack(self) -> None:
        await self._msg.ack()

    async def nak(self, delay: float | None = None) -> None:
        await self._msg.nak(delay=delay)

    async def term(self) -> None:
        await self._msg.term()

    async def in_progress(self) -> None:
        await self._msg.in_progress()

    def __repr__(self) -> str:
        return (
            f"NatsDelivery(subject={self.subject!r}, stream={self.stream!r}, "
            f"seq={self.stream_seq}, delivered={self.num_delivered})"
        )


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message read back from the stream by sequence (no acks possible)."""

    data: bytes
    headers: Mapping[str, str] | None
    subject: str
    stream: str
    stream_seq: int
    num_delivered: int = 0
