"""Idempotent inbox: apply a batch of deliveries in one transaction, then acknowledge.

Contract (DESIGN.md, "Inbox is idempotent and atomic with the handler"):

1. Decode every delivery.  A malformed body (:class:`~bridge.errors.EnvelopeError`,
   which includes a ``Nats-Msg-Id`` header that differs from ``event_id``) is
   dead-lettered as ``malformed``; it has no event id, so no inbox record.
2. Open ONE transaction for the batch, with publishing suppressed on the session
   (handlers never echo).  Events whose inbox record is already ``processed`` or
   ``dead_lettered`` are duplicates: acked later without running the handler.
3. For each remaining delivery, in order, inside its own SAVEPOINT: claim the
   inbox record (insert, or update a ``failed`` one, to ``processed``), run the
   handler, flush.  A failure rolls back only that savepoint.  A claim that finds
   the event processed meanwhile (another replica committed it) is a duplicate.
   Once a delivery of resource X failed, later deliveries of X in the batch are
   not run but NAKed with the same delay, so they come back after it (per-resource
   order) — except on their last allowed delivery, where they run anyway, so no
   delivery is dead-lettered without its handler having run.
4. Commit once.  If the commit fails, every delivery of the batch is NAKed
   (nothing was acked) with the backoff delay.
5. Only now: ack successes and duplicates; then for the failures either store a
   dead letter and ``term()``, or ``nak(delay)``.  Failed attempts and dead
   letters are recorded (status, attempts, last_error) in one short separate
   transaction so ``/sync_status`` can count them.  If the dead-letter publish
   fails, the delivery is NAKed, never acked.

With ``use_dlq=False`` (or no :class:`~bridge.dlq.DeadLetters`) nothing is ever
acked-and-dropped: a permanent failure is logged at ERROR and NAKed with the last
backoff delay.  After ``max_deliver`` deliveries the server stops redelivering it;
the message stays in the stream for an operator (``MAX_DELIVERIES`` advisory).

With ``use_inbox=False`` there is no idempotency record: handlers run for every
delivery (at-least-once), still in one transaction with a savepoint each.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bridge.config import BridgeConfig
from bridge.delivery import Delivery, NatsDelivery, Outcome, Received
from bridge.dlq import DeadLetters
from bridge.envelope import Envelope
from bridge.errors import DeadLetterError, EnvelopeError
from bridge.router import Action, Decision, Handler, Router, decide, decide_unknown
from bridge.schema import INBOX_DEAD_LETTERED, INBOX_FAILED, INBOX_PROCESSED, inbox

__all__ = ["Delivery", "InboxCounts", "InboxProcessor", "NatsDelivery", "Outcome"]

log = logging.getLogger("bridge.inbox")

SKIP_PUBLISH_KEY = "bridge.skip_publish"  # the session.info flag bridge.outbox reads
LAST_ERROR_LIMIT = 2000


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
    def key(self) -> str:
        env = self.envelope
        return f"{env.resource_type}:{env.resource_id}" if env is not None else ""


@contextlib.contextmanager
def _publishing_suppressed(session: AsyncSession) -> Iterator[None]:
    """Suppress outbox capture for the handler session (no echo)."""
    try:
        skip_publish = importlib.import_module("bridge.outbox").skip_publish
    except (ImportError, AttributeError):  # no outbox module: set the flag it would read
        session.info[SKIP_PUBLISH_KEY] = True
        yield
        return
    with skip_publish(session):
        yield


def _error_text(error: BaseException | None) -> str | None:
    if error is None:
        return None
    text = f"{type(error).__name__}: {error}"
    return text[:LAST_ERROR_LIMIT]


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
        pending = [item for item in items if item.outcome is None and item.decision is None]
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
        """Run handlers in one transaction (savepoint each); commit once.  Raises on commit."""
        use_inbox = self._config.use_inbox
        async with self._session_factory() as session:
            with _publishing_suppressed(session):
                async with session.begin():
                    settled = await self._settled_ids(session, items) if use_inbox else set()
                    done: set[str] = set()
                    blocked: dict[str, float] = {}
                    for item in items:
                        await self._apply_one(session, item, settled, done, blocked)

    async def _apply_one(
        self,
        session: AsyncSession,
        item: _Item,
        settled: set[str],
        done: set[str],
        blocked: dict[str, float],
    ) -> None:
        envelope, delivery = item.envelope, item.delivery
        assert envelope is not None
        if self._config.use_inbox and (envelope.event_id in settled or envelope.event_id in done):
            item.outcome = Outcome.DUPLICATE
            return
        last_chance = delivery.num_delivered >= self._config.max_deliver
        if item.key in blocked and not last_chance:
            item.record = False
            item.decision = Decision(Action.RETRY, delay=blocked[item.key])
            return
        handler: Handler | None = self._router.handler_for(envelope)
        if handler is None:
            item.decision = decide_unknown(
                self._router.unknown_event_policy,
                num_delivered=delivery.num_delivered,
                config=self._config,
            )
            if item.decision is not None:
                item.error = LookupError(f"no handler for event type {envelope.event_type!r}")
                self._block(blocked, item)
                return
        try:
            async with session.begin_nested():
                if self._config.use_inbox and not await self._claim(session, item):
                    item.outcome = Outcome.DUPLICATE
                    return
                if handler is not None:
                    await handler(session, envelope)
                    await session.flush()
        except Exception as exc:
            item.error = exc
            item.decision = decide(exc, num_delivered=delivery.num_delivered, config=self._config)
            self._block(blocked, item)
            log.warning(
                "handler failed",
                extra={
                    "event_id": envelope.event_id,
                    "event_type": envelope.event_type,
                    "stream_seq": delivery.stream_seq,
                    "attempt": delivery.num_delivered,
                    "action": str(item.decision.action),
                    "error": _error_text(exc),
                },
            )
            return
        item.outcome = Outcome.ACKED
        done.add(envelope.event_id)

    def _block(self, blocked: dict[str, float], item: _Item) -> None:
        decision = item.decision
        assert decision is not None
        # Later deliveries of the resource come back no earlier than this one.
        delay = decision.delay if decision.action is Action.RETRY else None
        blocked.setdefault(item.key, delay if delay is not None else self._config.backoff[0])

    @staticmethod
    async def _settled_ids(session: AsyncSession, items: Sequence[_Item]) -> set[str]:
        ids = [item.envelope.event_id for item in items if item.envelope is not None]
        rows = await session.execute(
            select(inbox.c.event_id).where(
                inbox.c.event_id.in_(ids),
                inbox.c.status.in_((INBOX_PROCESSED, INBOX_DEAD_LETTERED)),
            )
        )
        return {str(row[0]) for row in rows}

    @staticmethod
    async def _claim(session: AsyncSession, item: _Item) -> bool:
        """Insert the ``processed`` record (or turn a ``failed`` one); False if settled."""
        assert item.envelope is not None
        values = _row(item.envelope, item.delivery, INBOX_PROCESSED)
        insert = pg_insert(inbox).values(**values, processed_at=func.now())
        stmt = insert.on_conflict_do_update(
            index_elements=[inbox.c.event_id],
            set_={
                "status": INBOX_PROCESSED,
                "attempts": inbox.c.attempts + 1,
                "last_error": None,
                "stream_seq": insert.excluded.stream_seq,
                "processed_at": func.now(),
            },
            where=inbox.c.status == INBOX_FAILED,
        ).returning(inbox.c.event_id)
        return (await session.execute(stmt)).first() is not None

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
        """Record failed attempts and dead letters (separate short transaction)."""
        rows = [
            _row(
                item.envelope,
                item.delivery,
                INBOX_DEAD_LETTERED if item.outcome is Outcome.DEAD_LETTERED else INBOX_FAILED,
                last_error=_error_text(item.error),
            )
            for item in items
            if item.record and item.envelope is not None
        ]
        await self._record_rows(rows)

    async def _record_rows(self, rows: list[dict[str, Any]]) -> None:
        if rows and self._config.use_inbox:
            try:
                await self._upsert_records(rows)
            except Exception as exc:  # bookkeeping only: the NAK/term below still happens
                log.warning("could not record failed attempts", extra={"error": repr(exc)})

    async def _upsert_records(self, rows: list[dict[str, Any]]) -> None:
        stmt = pg_insert(inbox)
        stmt = stmt.on_conflict_do_update(
            index_elements=[inbox.c.event_id],
            set_={
                "status": stmt.excluded.status,
                "attempts": inbox.c.attempts + 1,
                "last_error": stmt.excluded.last_error,
                "stream_seq": stmt.excluded.stream_seq,
            },
            # A processed or dead-lettered record is final.
            where=inbox.c.status == INBOX_FAILED,
        )
        async with self._session_factory() as session, session.begin():
            await session.execute(stmt, rows)

    # -- MaxDeliveriesWatcher sink and status -------------------------------------
    async def settled(self, data: bytes) -> bool:
        """True when the event in ``data`` is already processed or dead-lettered."""
        try:
            event_id = Envelope.from_bytes(data).event_id
        except EnvelopeError:
            return False
        async with self._session_factory() as session:
            status = await session.scalar(
                select(inbox.c.status).where(inbox.c.event_id == event_id)
            )
        return status in (INBOX_PROCESSED, INBOX_DEAD_LETTERED)

    async def mark_dead_lettered(self, message: Received, reason: str) -> None:
        """Record a dead letter stored outside a batch (server gave up on it)."""
        try:
            envelope = Envelope.from_bytes(message.data)
        except EnvelopeError:
            return
        await self._record_rows(
            [_row(envelope, message, INBOX_DEAD_LETTERED, last_error=f"dead-lettered: {reason}")]
        )

    async def counts(self) -> InboxCounts:
        """Inbox records by status."""
        async with self._session_factory() as session:
            rows = await session.execute(
                select(inbox.c.status, func.count()).group_by(inbox.c.status)
            )
            by_status = {str(status): int(n) for status, n in rows}
        return InboxCounts(
            total=sum(by_status.values()),
            processed=by_status.get(INBOX_PROCESSED, 0),
            failed=by_status.get(INBOX_FAILED, 0),
            dead_lettered=by_status.get(INBOX_DEAD_LETTERED, 0),
        )


def _row(
    envelope: Envelope, message: Received, status: str, *, last_error: str | None = None
) -> dict[str, Any]:
    return {
        "event_id": envelope.event_id,
        "subject": message.subject,
        "event_type": envelope.event_type,
        "resource_type": envelope.resource_type,
        "resource_id": envelope.resource_id,
        "stream_seq": message.stream_seq,
        "status": status,
        "attempts": 1,
        "last_error": last_error,
    }
