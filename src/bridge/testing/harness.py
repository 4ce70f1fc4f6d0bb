"""``BridgeHarness``: feed envelopes to an application's router and inbox and assert what
became of them — without a NATS server; the database stays real.

    harness = BridgeHarness.of(bridge)            # a Bridge built as in production, not started
    delivered = await harness.deliver(envelope)
    assert delivered.outcome == "acked"

Each :meth:`BridgeHarness.deliver` runs the real
:class:`~bridge.inbox.processor.InboxProcessor` on one in-memory delivery
(:class:`MemoryDelivery`, the :class:`~bridge.transport.delivery.Delivery` protocol):
decoding and its limits, the inbox record claimed in the handler's transaction,
per-record order, future versions and unknown origins, schema versions, the handler
(your router, your middleware) and the decision — ack, NAK with the backoff delay, or
dead letter.  Dead letters are captured in memory (:attr:`BridgeHarness.dead_letters`)
instead of being published.  What is not here: JetStream itself (redelivery timing,
the duplicate window, ``ack_wait``), the relay, and the bridge's metrics and tracing
middleware.

A redelivery is :meth:`deliver` of the same envelope with the next ``delivery``
number (the server would redeliver after the NAK delay; the harness does not wait);
:meth:`deliver_until_settled` does that until the delivery is acked, a duplicate or
dead-lettered, as the server would up to ``max_deliver`` and the bridge's reserved
delivery after it.  The database must hold the bridge's tables
(:func:`bridge.schema.create_all` or the migrations) and the application's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bridge.config import BridgeConfig
from bridge.envelope import Envelope
from bridge.event_schemas import EventSchemas
from bridge.inbox.processor import InboxProcessor
from bridge.outbox.capture import Outbox
from bridge.routing.dlq import DeadLetters
from bridge.routing.router import Router
from bridge.schema import inbox
from bridge.transport.delivery import Outcome, Received

if TYPE_CHECKING:
    from bridge.runtime import Bridge


@dataclass
class MemoryDelivery:
    """One delivery held in memory: the :class:`~bridge.transport.delivery.Delivery`
    protocol, remembering how it was settled."""

    data: bytes
    headers: Mapping[str, str] | None
    subject: str
    stream: str
    stream_seq: int
    num_delivered: int
    settled: str | None = None  # "ack", "nak" or "term"
    nak_delay: float | None = None

    async def ack(self) -> None:
        self.settled = "ack"

    async def nak(self, delay: float | None = None) -> None:
        self.settled, self.nak_delay = "nak", delay

    async def term(self) -> None:
        self.settled = "term"

    async def in_progress(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class CapturedLetter:
    """A dead letter the harness kept instead of publishing it."""

    event_id: str | None
    reason: str
    error: BaseException | None
    deliveries: int
    data: bytes
    subject: str


class _MemoryDeadLetters(DeadLetters):
    """The processor's dead-letter sink, in memory (no stream, no publisher)."""

    def __init__(self, config: BridgeConfig) -> None:  # no NATS: nothing of the base is used
        self._config = config
        self.subject = config.subjects.dlq
        self.captured: list[CapturedLetter] = []

    async def publish(
        self,
        delivery: Received,
        *,
        reason: str,
        error: BaseException | None,
        event_id: str | None = None,
    ) -> None:
        self.captured.append(
            CapturedLetter(
                event_id=event_id, reason=reason, error=error,
                deliveries=delivery.num_delivered, data=delivery.data, subject=delivery.subject,
            )
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class InboxRecord:
    """An event's inbox record (``status``: processed, failed or dead_lettered)."""

    status: str
    attempts: int
    last_error: str | None


@dataclass(frozen=True, slots=True)
class Delivered:
    """What became of one delivery.

    ``outcome`` is an :class:`~bridge.transport.delivery.Outcome` (a string: ``"acked"``,
    ``"duplicate"``, ``"retried"``, ``"dead_lettered"``); ``delay`` the NAK delay of a
    retried one; ``reason`` and ``dead_letter`` a dead-lettered one's; ``error`` what the
    handler (or the decoding, or a bound) raised; ``inbox`` the event's inbox record
    after the delivery (``None`` without one: a malformed body, ``use_inbox=False``).
    """

    outcome: Outcome
    deliveries: int
    envelope: Envelope | None
    delay: float | None = None
    reason: str | None = None
    error: BaseException | None = None
    dead_letter: CapturedLetter | None = None
    inbox: InboxRecord | None = None


@dataclass
class _Sequence:
    next_seq: int = 1
    by_body: dict[bytes, int] = field(default_factory=dict)

    def seq_for(self, body: bytes) -> int:
        if body not in self.by_body:
            self.by_body[body] = self.next_seq
            self.next_seq += 1
        return self.by_body[body]


class BridgeHarness:
    """Deliver envelopes through the real inbox without NATS (module doc)."""

    def __init__(
        self,
        config: BridgeConfig,
        engine: AsyncEngine,
        router: Router,
        *,
        event_schemas: EventSchemas | None = None,
        session_factory: async_sessionmaker[AsyncSession] | None = None,
    ) -> None:
        """``config``: the consuming side's (its consume subject, limits, backoff,
        ``max_deliver``, clock); ``router``: the application's; ``session_factory``:
        default one like the bridge's (capturing sessions of ``config``'s outbox)."""
        self.config = config
        self.engine = engine
        schemas = event_schemas or EventSchemas()
        if session_factory is None:
            outbox = Outbox(config, schemas=schemas)
            session_factory = async_sessionmaker(
                engine, expire_on_commit=False, sync_session_class=outbox.session_class
            )
        self._dead_letters = _MemoryDeadLetters(config)
        self._processor = InboxProcessor(
            config, session_factory, router, self._dead_letters, schemas=schemas
        )
        self._sequence = _Sequence()

    @classmethod
    def of(cls, bridge: Bridge) -> BridgeHarness:
        """A harness for ``bridge`` (not started): its config, engine, router, event
        schemas and session factory."""
        return cls(
            bridge.config, bridge.engine, bridge.router, event_schemas=bridge.event_schemas,
            session_factory=bridge.session_factory,
        )  # fmt: skip

    @property
    def dead_letters(self) -> list[CapturedLetter]:
        """Every dead letter so far, oldest first."""
        return list(self._dead_letters.captured)

    async def deliver(
        self,
        message: Envelope | bytes,
        *,
        delivery: int = 1,
        headers: Mapping[str, str] | None = None,
        subject: str | None = None,
    ) -> Delivered:
        """Deliver ``message`` (an envelope, or a raw body to test hostile input) as
        delivery number ``delivery`` on ``subject`` (default: this app's consume
        subject) and return what became of it.  ``headers`` default to the
        envelope's (``Nats-Msg-Id`` = event id)."""
        envelope = message if isinstance(message, Envelope) else None
        data = message.to_bytes() if isinstance(message, Envelope) else message
        if headers is None:
            headers = envelope.headers() if envelope is not None else {}
        memory = MemoryDelivery(
            data=data, headers=dict(headers), subject=subject or self.config.subjects.consume,
            stream=self.config.stream_name, stream_seq=self._sequence.seq_for(data),
            num_delivered=delivery,
        )  # fmt: skip
        item = self._processor.decode(memory)
        [outcome] = await self._processor.process_decoded([item])
        letter = self._dead_letters.captured[-1] if outcome is Outcome.DEAD_LETTERED else None
        record = None
        if item.envelope is not None and self.config.use_inbox:
            record = await self.inbox_record(item.envelope.event_id)
        return Delivered(
            outcome=outcome,
            deliveries=delivery,
            envelope=item.envelope,
            delay=memory.nak_delay if memory.settled == "nak" else None,
            reason=letter.reason if letter is not None else None,
            error=item.error if outcome in (Outcome.RETRIED, Outcome.DEAD_LETTERED) else None,
            dead_letter=letter,
            inbox=record,
        )

    async def deliver_until_settled(self, message: Envelope | bytes) -> list[Delivered]:
        """Deliver ``message`` again and again, as the server would after each NAK,
        until it is acked, a duplicate or dead-lettered; every delivery's result, in
        order.  Never more than ``max_deliver`` + 1 deliveries (the last is the
        bridge's reserved one)."""
        results: list[Delivered] = []
        for number in range(1, self.config.max_deliver + 2):
            results.append(await self.deliver(message, delivery=number))
            if results[-1].outcome is not Outcome.RETRIED:
                break
        return results

    async def inbox_record(self, event_id: str) -> InboxRecord | None:
        """The inbox record of ``event_id`` now (``None``: there is none)."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(inbox.c.status, inbox.c.attempts, inbox.c.last_error).where(
                        inbox.c.event_id == event_id
                    )
                )
            ).first()
        return InboxRecord(row.status, row.attempts, row.last_error) if row else None

    def __repr__(self) -> str:
        return f"BridgeHarness(app={self.config.app_name!r}, letters={len(self.dead_letters)})"
