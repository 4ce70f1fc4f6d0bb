"""Idempotent inbox: apply a batch of deliveries in one transaction, then acknowledge.

Contract (docs/ARCHITECTURE.md, "Where each guarantee lives": no duplicate application,
ack only after commit):

1. Decode every delivery, each on its own (:meth:`InboxProcessor.decode`).  A
   malformed body (:class:`~bridge.errors.EnvelopeError`: not a valid envelope, a
   ``Nats-Msg-Id`` header that differs from ``event_id``, or over a limit of
   :mod:`bridge._envelope_limits` — size, nesting, strict JSON, field lengths) and
   anything else that goes wrong while decoding it is dead-lettered as
   ``malformed`` on this first delivery, alone: it has no event id, so no inbox
   record, and the other deliveries of the batch go on as if it were not there.
2. Open ONE transaction for the batch, with publishing suppressed on the session
   (handlers never echo), and claim the inbox records of the whole batch in one
   statement (:func:`bridge.inbox._store.claim`).  An event whose record is
   already ``processed`` or ``dead_lettered`` is not claimed: a duplicate, acked
   later without running the handler.  A record another replica holds makes the
   claim wait for it, so an event is never applied twice concurrently.
3. Run the claimed deliveries' handlers in order (:mod:`bridge.inbox._apply`):
   optimistically, all in that one transaction without savepoints, committed once;
   after a rollback (a handler raised, or the commit failed) again with a SAVEPOINT
   per delivery, which gives each its own outcome.  Per-record order, schema
   versions, batch-handler runs and which handlers may run twice are that module's
   rules.  Failures go back to ``failed`` (attempts, last_error) in the committed
   transaction, so ``/sync_status`` counts them.
4. If the batch cannot be committed on either path, every delivery of the batch
   is NAKed (nothing was acked, nothing recorded) with the backoff delay.
5. Only now: ack successes and duplicates; then for the failures either store a
   dead letter, mark the record ``dead_lettered`` (a short separate transaction)
   and ``term()``, or ``nak(delay)``.  If the dead-letter publish fails, the
   delivery is NAKed, never acked.

With ``use_dlq=False`` (or no :class:`~bridge.routing.dlq.DeadLetters`) nothing is ever
acked-and-dropped: a permanent failure is logged at ERROR and NAKed with the last
backoff delay.  After ``max_deliver`` deliveries the server stops redelivering it;
the message stays in the stream for an operator (``MAX_DELIVERIES`` advisory).

With ``use_inbox=False`` there is no idempotency record: handlers run for every
delivery (at-least-once), with the same optimistic attempt and fallback; per-record
order then holds within a batch only (no ``failed`` records to wait for).

Throughput and what the application's engine should have (statement cache, pool,
batch size, no ``synchronous_commit=off``): docs/OPERATIONS.md, "Consumer throughput".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bridge._envelope_limits import EnvelopeLimits
from bridge._support.deadline import Deadline
from bridge.config import BridgeConfig
from bridge.envelope import Envelope
from bridge.errors import DeadLetterError, EnvelopeError
from bridge.event_schemas import EventSchemas, SchemaObserver
from bridge.inbox import _store as store
from bridge.inbox._apply import BatchApplier, BatchItem, error_text
from bridge.routing.dlq import DeadLetters
from bridge.routing.outcomes import Action, Decision, decide
from bridge.routing.router import Router
from bridge.schema import INBOX_DEAD_LETTERED, INBOX_FAILED, INBOX_PROCESSED
from bridge.transport.delivery import Delivery, Outcome, Received

log = logging.getLogger("bridge.inbox")


def _exc_info(error: BaseException | None) -> BaseException | None:
    """``error`` for a log record's traceback, when it was raised (has one)."""
    return error if error is not None and error.__traceback__ is not None else None


@dataclass(frozen=True, slots=True)
class InboxCounts:
    total: int
    processed: int
    failed: int
    dead_lettered: int


async def inbox_counts(session: AsyncSession) -> InboxCounts:
    """Inbox records by status (also used by the ``bridge`` CLI)."""
    by_status = await store.counts_by_status(session)
    return InboxCounts(
        total=sum(by_status.values()),
        processed=by_status.get(INBOX_PROCESSED, 0),
        failed=by_status.get(INBOX_FAILED, 0),
        dead_lettered=by_status.get(INBOX_DEAD_LETTERED, 0),
    )


class InboxProcessor:
    """Applies deliveries through the router with the inbox contract (module doc)."""

    def __init__(
        self,
        config: BridgeConfig,
        session_factory: async_sessionmaker[AsyncSession],
        router: Router,
        dead_letters: DeadLetters | None,
        *,
        optimistic: bool = True,
        schemas: EventSchemas | None = None,
        schema_observer: SchemaObserver | None = None,
    ) -> None:
        """``optimistic=False`` applies every batch on the savepoint path (module doc).

        ``schemas``: the app's event versions; each delivery is upcast and validated
        with them before its handler (:mod:`bridge.event_schemas`).
        """
        self._config = config
        self._session_factory = session_factory
        self._dead_letters = dead_letters if config.use_dlq else None
        self._limits = EnvelopeLimits.from_options(config.consumer)
        self._applier = BatchApplier(
            config,
            session_factory,
            router,
            optimistic=optimistic,
            schemas=schemas,
            schema_observer=schema_observer,
        )

    @property
    def dead_letters(self) -> DeadLetters | None:
        """The DLQ in use (``None`` when ``use_dlq`` is off)."""
        return self._dead_letters

    @property
    def optimistic_batches(self) -> int:
        """Batches committed on the optimistic path (no savepoints)."""
        return self._applier.optimistic_batches

    @property
    def fallback_batches(self) -> int:
        """Batches rolled back on the optimistic path and re-run with savepoints."""
        return self._applier.fallback_batches

    # -- the batch ----------------------------------------------------------------
    async def process_batch(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        """Apply ``deliveries`` (one transaction), acknowledge each; return outcomes in order."""
        return await self.process_decoded([self.decode(d) for d in deliveries])

    async def process_decoded(self, items: Sequence[BatchItem]) -> list[Outcome]:
        """:meth:`process_batch` for deliveries already through :meth:`decode`.

        The consumer decodes each delivery once, when it partitions a batch by
        record, and hands the decoded items here (the body is never parsed twice).
        """
        pending = [item for item in items if item.decision is None]
        if pending:
            try:
                async with Deadline(self._config.consumer.batch_timeout, "inbox transaction"):
                    await self._applier.apply(pending)
            except Exception as exc:
                log.error(
                    "inbox transaction failed; NAKing the batch",
                    extra={
                        "batch": len(items),
                        "event_ids": [item.event_id for item in pending][:10],
                        "error_type": type(exc).__name__,
                        "error": str(exc),
                    },
                    exc_info=exc,
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

    def decode(self, delivery: Delivery) -> BatchItem:
        """Decode one delivery within the configured limits; never raises an Exception.

        A body that cannot be an envelope (:mod:`bridge._envelope_limits`: size,
        UTF-8, nesting, strict JSON, field types and lengths, or anything else that
        goes wrong while decoding it) is decided ``malformed`` here, alone: it gets
        a dead letter on this first delivery and no inbox record (it has no usable
        event id); the other deliveries of its batch are not affected.
        """
        item = BatchItem(delivery)
        try:
            item.envelope = Envelope.from_bytes(
                delivery.data, delivery.headers, limits=self._limits
            )
        except Exception as exc:  # every decoding failure is the body's, never the batch's
            error = (
                exc
                if isinstance(exc, EnvelopeError)
                else EnvelopeError(f"body cannot be decoded: {type(exc).__name__}: {exc}")
            )
            item.error = error
            item.record = False
            item.decision = decide(error, num_delivered=delivery.num_delivered, config=self._config)
        return item

    # -- after the commit ---------------------------------------------------------
    async def _settle_failures(self, items: list[BatchItem]) -> None:
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
                        "event_id": item.event_id or None,
                        "reason": decision.reason,
                        "subject": item.delivery.subject,
                        "stream_seq": item.delivery.stream_seq,
                        "deliveries": item.delivery.num_delivered,
                        "body": item.delivery.data.decode(errors="replace"),
                    },
                    exc_info=_exc_info(item.error),
                )
                item.decision = Decision(Action.RETRY, delay=self._config.backoff[-1])
                continue
            try:
                await self._dead_letters.publish(
                    item.delivery,
                    reason=decision.reason or "rejected",
                    error=item.error,
                    event_id=item.event_id or None,
                )
                item.outcome = Outcome.DEAD_LETTERED
            except DeadLetterError as exc:
                log.error(
                    "dead-letter publish failed; NAKing",
                    extra={
                        "event_id": item.event_id or None,
                        "subject": item.delivery.subject,
                        "deliveries": item.delivery.num_delivered,
                        "error": str(exc),
                    },
                )
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

    async def _record(self, items: list[BatchItem]) -> None:
        """Mark dead-lettered records (separate short transaction, after the DLQ has them)."""
        rows = [
            store.inbox_row(
                item.envelope,
                item.delivery,
                INBOX_DEAD_LETTERED,
                attempts=item.delivery.num_delivered,
                last_error=error_text(item.error),
            )
            for item in items
            if item.record and item.envelope is not None and item.outcome is Outcome.DEAD_LETTERED
        ]
        await self._record_rows(rows)

    async def _record_rows(self, rows: list[dict[str, Any]]) -> None:
        if rows and self._config.use_inbox:
            try:
                async with (
                    Deadline(self._config.consumer.batch_timeout, "dead-letter bookkeeping"),
                    self._session_factory() as session,
                    session.begin(),
                ):
                    await store.record(session, rows)
            except Exception as exc:  # bookkeeping only: the term below still happens
                log.warning("could not record dead letters", extra={"error": repr(exc)})

    # -- MaxDeliveriesWatcher sink and status -------------------------------------
    async def settled(self, data: bytes) -> bool:
        """True when the event in ``data`` is already processed or dead-lettered."""
        try:
            event_id = Envelope.from_bytes(data, limits=self._limits).event_id
        except EnvelopeError:
            return False
        async with self._session_factory() as session:
            return await store.is_final(session, event_id)

    async def mark_dead_lettered(self, message: Received, reason: str) -> None:
        """Record a dead letter stored outside a batch (server gave up on it)."""
        try:
            envelope = Envelope.from_bytes(message.data, limits=self._limits)
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
            return await inbox_counts(session)
