"""Idempotent inbox: apply a batch of deliveries in one transaction, then acknowledge.

Contract (DESIGN.md, "Inbox is idempotent and atomic with the handler"):

1. Decode every delivery.  A malformed body (:class:`~bridge.errors.EnvelopeError`,
   which includes a ``Nats-Msg-Id`` header that differs from ``event_id``) is
   dead-lettered as ``malformed``; it has no event id, so no inbox record.
2. Open ONE transaction for the batch, with publishing suppressed on the session
   (handlers never echo), and claim the inbox records of the whole batch in one
   statement (:func:`bridge.inbox_store.claim`).  An event whose record is
   already ``processed`` or ``dead_lettered`` is not claimed: a duplicate, acked
   later without running the handler.  A record another replica holds makes the
   claim wait for it, so an event is never applied twice concurrently.
3. For each claimed delivery, in order, inside its own SAVEPOINT
   (``session.begin_nested()``): run the handler, flush.  A failure rolls back
   only that savepoint; its record goes back to ``failed`` (attempts, last_error)
   in the same transaction, so ``/sync_status`` counts it once committed.
   Once a delivery of resource X failed, later deliveries of X in the batch are
   not run but NAKed with the same delay, so they come back after it (per-resource
   order) — except on their last allowed delivery, where they run anyway, so no
   delivery is dead-lettered without its handler having run.
4. Commit once.  If the commit fails, every delivery of the batch is NAKed
   (nothing was acked, nothing recorded) with the backoff delay.
5. Only now: ack successes and duplicates; then for the failures either store a
   dead letter, mark the record ``dead_lettered`` (a short separate transaction)
   and ``term()``, or ``nak(delay)``.  If the dead-letter publish fails, the
   delivery is NAKed, never acked.

With ``use_dlq=False`` (or no :class:`~bridge.dlq.DeadLetters`) nothing is ever
acked-and-dropped: a permanent failure is logged at ERROR and NAKed with the last
backoff delay.  After ``max_deliver`` deliveries the server stops redelivering it;
the message stays in the stream for an operator (``MAX_DELIVERIES`` advisory).

With ``use_inbox=False`` there is no idempotency record: handlers run for every
delivery (at-least-once), still in one transaction with a savepoint each.

Throughput: savepoint statements dominate the per-event cost.  SQLAlchemy names
each savepoint of a transaction differently (``sa_savepoint_<n>``) and its asyncpg
dialect prepares every distinct statement, so give the engine a prepared-statement
cache larger than ``2 * batch_size`` (``?prepared_statement_cache_size=1000`` in the
URL); the default of 100 makes every SAVEPOINT/RELEASE a prepare + execute.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bridge import inbox_store as store
from bridge.config import BridgeConfig
from bridge.delivery import Delivery, NatsDelivery, Outcome, Received
from bridge.dlq import DeadLetters
from bridge.envelope import Envelope
from bridge.errors import DeadLetterError, EnvelopeError
from bridge.outbox import SKIP_PUBLISH_KEY, skip_publish
from bridge.router import Action, Decision, Handler, Router, decide, decide_unknown
from bridge.schema import INBOX_DEAD_LETTERED, INBOX_FAILED, INBOX_PROCESSED

__all__ = [
    "SKIP_PUBLISH_KEY",
    "Delivery",
    "InboxCounts",
    "InboxProcessor",
    "NatsDelivery",
    "Outcome",
]

log = logging.getLogger("bridge.inbox")


@dataclass(frozen=True, slots=True)
class InboxCounts:
    total: int
    processed: int
    failed: int
    dead_lettered: int


@dataclass(slots=True)
class _Item:
    """Per-delivery state while a batch is being applied."""

    delivery: Delivery
    envelope: Envelope | None = None
    outcome: Outcome | None = None
    decision: Decision | None = None
    error: BaseException | None = None
    record: bool = True  # record a failed attempt / dead letter in the inbox

    @property
    def event_id(self) -> str:
        return self.envelope.event_id if self.envelope is not None else ""

    @property
    def key(self) -> str:
        env = self.envelope
        return f"{env.resource_type}:{env.resource_id}" if env is not None else ""


@dataclass(slots=True)
class _BatchState:
    """Bookkeeping of one batch transaction."""

    claimed: set[str] | None  # event ids claimed (None: inbox off)
    done: set[str] = field(default_factory=set)  # applied in this batch
    seen: set[str] = field(default_factory=set)  # run (or tried) in this batch
    blocked: dict[str, float] = field(default_factory=dict)  # resource key -> NAK delay
    failed: list[tuple[str, str | None]] = field(default_factory=list)  # ran and failed
    held: list[tuple[str, str | None]] = field(default_factory=list)  # claimed, not run


def _error_text(error: BaseException | None) -> str | None:
    if error is None:
        return None
    text = f"{type(error).__name__}: {error}"
    return text[: store.LAST_ERROR_LIMIT]


class InboxProcessor:
    """Applies deliveries through the router with the inbox contract (module doc)."""

    def __init__(
        self,
        config: BridgeConfig,
        session_factory: async_sessionmaker[AsyncSession],
        router: Router,
        dead_letters: DeadLetters | None,
    ) -> None:
        self._config = config
        self._session_factory = session_factory
        self._router = router
        self._dead_letters = dead_letters if config.use_dlq else None

    @property
    def dead_letters(self) -> DeadLetters | None:
        """The DLQ in use (``None`` when ``use_dlq`` is off)."""
        return self._dead_letters

    # -- the batch ----------------------------------------------------------------
    async def process_batch(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        """Apply ``deliveries`` (one transaction), acknowledge each; return outcomes in order."""
        items = [self._decode(d) for d in deliveries]
        pending = [item for item in items if item.decision is None]
        if pending:
            try:
                await self._apply(pending)
            except Exception as exc:
                log.error(
                    "inbox transaction failed; NAKing the batch",
                    extra={"deliveries": len(deliveries), "error": repr(exc)},
                )
                for item in pending:
                    item.outcome, item.error, item.record = None, exc, False
                    item.decision = Decision(
                        Action.RETRY, delay=self._config.backoff_for(item.delivery.num_delivered)
                    )
        for item in items:
            if item.outcome in (Outcome.ACKED, Outcome.DUPLICATE):
                await item.delivery.ack()
        await self._settle_failures([item for item in items if item.outcome is None])
        return [item.outcome or Outcome.RETRIED for item in items]

    def _decode(self, delivery: Delivery) -> _Item:
        item = _Item(delivery)
        try:
            item.envelope = Envelope.from_bytes(delivery.data, delivery.headers)
        except EnvelopeError as exc:
            item.error = exc
            item.record = False
            item.decision = decide(exc, num_delivered=delivery.num_delivered, config=self._config)
        return item

    async def _apply(self, items: list[_Item]) -> None:
        """Claim, run handlers (savepoint each), record failures; commit.  Raises on failure."""
        use_inbox = self._config.use_inbox
        async with self._session_factory() as session:
            with skip_publish(session):
                async with session.begin():
                    claimed = await self._claim(session, items) if use_inbox else None
                    state = _BatchState(claimed)
                    for item in items:
                        await self._apply_one(session, item, state)
                    if use_inbox:
                        await store.mark_failed(session, state.failed, ran=True)
                        await store.mark_failed(session, state.held, ran=False)

    @staticmethod
    async def _claim(session: AsyncSession, items: list[_Item]) -> set[str]:
        # one row per event id: the same event twice in a batch is claimed once
        rows = {
            item.event_id: store.inbox_row(item.envelope, item.delivery, INBOX_PROCESSED)
            for item in items
            if item.envelope is not None
        }
        return await store.claim(session, list(rows.values()))

    async def _apply_one(self, session: AsyncSession, item: _Item, state: _BatchState) -> None:
        envelope, delivery = item.envelope, item.delivery
        assert envelope is not None
        event_id = envelope.event_id
        if state.claimed is not None:
            if event_id in state.done or event_id not in state.claimed:
                item.outcome = Outcome.DUPLICATE
                return
            if event_id in state.seen:
                # the same event twice in one batch and the first one failed: its
                # record is taken; retry this copy with it
                item.record = False
                item.decision = Decision(Action.RETRY, delay=state.blocked.get(item.key))
                return
            state.seen.add(event_id)
        last_chance = delivery.num_delivered >= self._config.max_deliver
        if item.key in state.blocked and not last_chance:
            item.record = False
            item.decision = Decision(Action.RETRY, delay=state.blocked[item.key])
            state.held.append((event_id, "held back: an earlier event of this resource failed"))
            return
        handler: Handler | None = self._router.handler_for(envelope)
        if handler is None:
            item.decision = decide_unknown(
                self._router.unknown_event_policy,
                num_delivered=delivery.num_delivered,
                config=self._config,
            )
            if item.decision is not None:
                self._failed(state, item, LookupError(f"no handler for {envelope.event_type!r}"))
                return
        else:
            try:
                async with session.begin_nested():
                    await handler(session, envelope)
                    await session.flush()
            except Exception as exc:
                item.decision = decide(
                    exc, num_delivered=delivery.num_delivered, config=self._config
                )
                self._failed(state, item, exc)
                log.warning(
                    "handler failed",
                    extra={
                        "event_id": event_id,
                        "event_type": envelope.event_type,
                        "stream_seq": delivery.stream_seq,
                        "attempt": delivery.num_delivered,
                        "action": str(item.decision.action),
                        "error": _error_text(exc),
                    },
                )
                return
        item.outcome = Outcome.ACKED
        state.done.add(event_id)

    def _failed(self, state: _BatchState, item: _Item, error: BaseException) -> None:
        decision = item.decision
        assert decision is not None and item.envelope is not None
        item.error = error
        state.failed.append((item.envelope.event_id, _error_text(error)))
        # Later deliveries of the resource come back no earlier than this one.
        delay = decision.delay if decision.action is Action.RETRY else None
        state.blocked.setdefault(item.key, delay if delay is not None else self._config.backoff[0])

    # -- after the commit ---------------------------------------------------------
    async def _settle_failures(self, items: list[_Item]) -> None:
        """Dead-letter or NAK every item that did not succeed (none is ever acked)."""
        if not items:
            return
        for item in items:
            decision = item.decision
            assert decision is not None
            if decision.action is not Action.DEAD_LETTER:
                continue
            if self._dead_letters is None:
                log.error(
                    "permanent failure with dead letters disabled; leaving it un-acked",
                    extra={
                        "reason": decision.reason,
                        "subject": item.delivery.subject,
                        "stream_seq": item.delivery.stream_seq,
                        "body": item.delivery.data.decode(errors="replace"),
                    },
                )
                item.decision = Decision(Action.RETRY, delay=self._config.backoff[-1])
                continue
            try:
                await self._dead_letters.publish(
                    item.delivery, reason=decision.reason or "rejected", error=item.error
                )
                item.outcome = Outcome.DEAD_LETTERED
            except DeadLetterError as exc:
                log.error("dead-letter publish failed; NAKing", extra={"error": str(exc)})
                item.decision = Decision(
                    Action.RETRY, delay=self._config.backoff_for(item.delivery.num_delivered)
                )
        await self._record(items)
        for item in items:
            if item.outcome is Outcome.DEAD_LETTERED:
                await item.delivery.term()
            else:
                assert item.decision is not None
                await item.delivery.nak(item.decision.delay)

    async def _record(self, items: list[_Item]) -> None:
        """Mark dead-lettered records (separate short transaction, after the DLQ has them)."""
        rows = [
            store.inbox_row(
                item.envelope,
                item.delivery,
                INBOX_DEAD_LETTERED,
                attempts=item.delivery.num_delivered,
                last_error=_error_text(item.error),
            )
            for item in items
            if item.record and item.envelope is not None and item.outcome is Outcome.DEAD_LETTERED
        ]
        await self._record_rows(rows)

    async def _record_rows(self, rows: list[dict[str, Any]]) -> None:
        if rows and self._config.use_inbox:
            try:
                async with self._session_factory() as session, session.begin():
                    await store.record(session, rows)
            except Exception as exc:  # bookkeeping only: the term below still happens
                log.warning("could not record dead letters", extra={"error": repr(exc)})

    # -- MaxDeliveriesWatcher sink and status -------------------------------------
    async def settled(self, data: bytes) -> bool:
        """True when the event in ``data`` is already processed or dead-lettered."""
        try:
            event_id = Envelope.from_bytes(data).event_id
        except EnvelopeError:
            return False
        async with self._session_factory() as session:
            return await store.is_final(session, event_id)

    async def mark_dead_lettered(self, message: Received, reason: str) -> None:
        """Record a dead letter stored outside a batch (server gave up on it)."""
        try:
            envelope = Envelope.from_bytes(message.data)
        except EnvelopeError:
            return
        row = store.inbox_row(
            envelope,
            message,
            INBOX_DEAD_LETTERED,
            attempts=message.num_delivered,
            last_error=f"dead-lettered: {reason}",
        )
        await self._record_rows([row])

    async def counts(self) -> InboxCounts:
        """Inbox records by status."""
        async with self._session_factory() as session:
            by_status = await store.counts_by_status(session)
        return InboxCounts(
            total=sum(by_status.values()),
            processed=by_status.get(INBOX_PROCESSED, 0),
            failed=by_status.get(INBOX_FAILED, 0),
            dead_lettered=by_status.get(INBOX_DEAD_LETTERED, 0),
        )
