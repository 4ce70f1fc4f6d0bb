"""One batch transaction of the inbox: optimistic attempt, savepoint fallback.

Used by :class:`~bridge.inbox.processor.InboxProcessor` (whose module doc has the whole
contract) after decoding and before acknowledging.  Every claimed delivery runs
in order; outcomes are identical on both paths, only the cost differs.

1. **Optimistic attempt** (``optimistic=True``, the default): claim the batch's
   inbox records (one statement, which also reads the records still waiting for a
   redelivery, :mod:`bridge.inbox._order`), run every handler in ONE
   transaction with NO savepoints (flush after each), record the non-handler
   failures (unknown event types, held-back deliveries), commit once.  Round
   trips per event: just the handler's own statements.  If a handler raises, the
   attempt stops there (no later handler runs in it) and the whole transaction is
   rolled back; if the commit fails, likewise.  Nothing has been acked or recorded.
2. **Fallback**, only after such a rollback: the same batch again in a fresh
   transaction with a SAVEPOINT per delivery (``session.begin_nested()``).  A
   failure rolls back only its savepoint; its record goes back to ``failed``
   (attempts, last_error, retry_at) in the same transaction.  A delivery that must
   wait for an earlier event of its record — one that failed earlier in the batch,
   or a ``failed`` record of an earlier batch or another replica — is held back,
   not run (:mod:`bridge.inbox._order`; on both paths alike, never on its last
   allowed delivery).  The delivery whose handler raised in the
   attempt is NOT run again: the exception it raised decides it (same decision as
   if it had failed here).  The commit failing here fails the batch (the caller
   NAKs every delivery).

**Handlers may run twice**: every handler that ran before the failing one in a
rolled-back attempt runs again in the fallback, as do all handlers of a batch
whose optimistic commit failed.  The first run's database writes were rolled
back, so this is safe as long as a handler keeps its effects inside the session
it is given (see :mod:`bridge.routing.router`); anything it does outside (another
connection, an HTTP call) must be idempotent.

**Batch handlers** (:meth:`bridge.routing.router.Router.on_batch`).  On the optimistic
path the batch is split into *runs*: maximal sequences of deliveries, in delivery
order, whose handler is the batch handler of one resource type; deliveries decided
without a handler call (duplicates, held back, unknown type, schema version not
applicable) neither join nor break a run.  Each run is ONE call
``batch_handler(session, envelopes)`` (then a flush), made where the run ends, so
handler calls keep the delivered order across resources (a user after its
organization), as per-event handlers would see it.  If the call raises, the whole
attempt is rolled back; a run of one keeps that exception for the fallback like a
per-event handler, a longer run cannot name the failing delivery, so the fallback
runs each of them: on the savepoint path every delivery runs alone,
``batch_handler(session, [envelope])`` in its own savepoint.  Each envelope is
brought to its current schema version before it joins a run; one that cannot be is
decided alone and never reaches the batch handler.

Caveat kept from the savepoint path: a handler that catches a database error
without a savepoint of its own leaves the transaction aborted; SQLAlchemy does
not roll back to a savepoint whose RELEASE failed, so such a batch fails as a
whole (every delivery NAKed, nothing acked).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bridge.config import BridgeConfig
from bridge.envelope import Envelope
from bridge.event_schemas import EventSchemas, SchemaObserver
from bridge.inbox import _store as store
from bridge.inbox._order import RecordOrder
from bridge.outbox.capture import ensure_capture_off, skip_publish
from bridge.routing.outcomes import Action, Decision, decide, decide_exhausted, decide_unknown
from bridge.routing.router import BatchHandler, Handler, Router
from bridge.routing.version_time import refusal
from bridge.transport.delivery import Delivery, Outcome

log = logging.getLogger("bridge.inbox")


@dataclass(slots=True)
class BatchItem:
    """Per-delivery state while a batch is being applied."""

    delivery: Delivery
    envelope: Envelope | None = None
    outcome: Outcome | None = None
    decision: Decision | None = None
    error: BaseException | None = None
    record: bool = True  # record a failed attempt / dead letter in the inbox
    # the handler's failure in the rolled-back optimistic attempt: the fallback
    # decides with it instead of running the handler a second time
    prior_failure: Exception | None = None
    # the envelope at the current schema version, or why it cannot be: computed
    # once (bridge.event_schemas), kept when the batch is re-run
    resolved: Envelope | Exception | None = None

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
    order: RecordOrder  # which deliveries wait for an earlier one (bridge.inbox._order)
    done: set[str] = field(default_factory=set)  # applied in this batch
    seen: set[str] = field(default_factory=set)  # run (or tried) in this batch
    failed: list[store.Failure] = field(default_factory=list)  # ran and failed
    held: list[store.Failure] = field(default_factory=list)  # claimed, not run
    # the optimistic path's open run of one batch handler (module doc): its
    # resource type, handler and (item, resolved envelope) pairs
    run_resource: str | None = None
    run_handler: BatchHandler | None = None
    run: list[tuple[BatchItem, Envelope]] = field(default_factory=list)


class _RolledBack(Exception):
    """The optimistic transaction was rolled back (a handler raised, or the commit failed)."""

    def __init__(
        self, cause: str, item: BatchItem | None = None, error: Exception | None = None
    ) -> None:
        super().__init__(cause)
        self.item = item  # the delivery whose handler raised (None: the commit failed)
        self.error = error


async def _run_batch(
    session: AsyncSession, handler: BatchHandler, run: Sequence[tuple[BatchItem, Envelope]]
) -> None:
    """Call a batch handler once for a run and flush (optimistic path only).

    A failure raises :class:`_RolledBack`; it names the delivery only when the run
    has just one (a longer run's handler does not say which envelope failed).
    """
    try:
        await handler(session, [envelope for _item, envelope in run])
        await session.flush()
    except Exception as exc:
        item = run[0][0] if len(run) == 1 else None
        first = run[0][0].event_id
        raise _RolledBack(
            f"batch handler failed on {len(run)} events from {first}", item, exc
        ) from exc


async def _run(
    session: AsyncSession, handler: Handler, item: BatchItem, envelope: Envelope, savepoints: bool
) -> Exception | None:
    """Run one handler and flush; return its failure.

    With ``savepoints`` a failure rolls back only the handler's savepoint.
    Without, the first failure raises :class:`_RolledBack`: the transaction has no
    way to undo just this handler, so the whole batch is rolled back.
    """
    if not savepoints:
        try:
            await handler(session, envelope)
            await session.flush()
        except Exception as exc:
            raise _RolledBack(f"handler failed on event {item.event_id}", item, exc) from exc
        return None
    try:
        async with session.begin_nested():
            await handler(session, envelope)
            await session.flush()
    except Exception as exc:
        return exc
    return None


def error_text(error: BaseException | None) -> str | None:
    """``"<class>: <message>"``, cut to what the inbox's ``last_error`` keeps."""
    if error is None:
        return None
    text = f"{type(error).__name__}: {error}"
    return text[: store.LAST_ERROR_LIMIT]


class BatchApplier:
    """Applies the decoded deliveries of one batch in the database (module doc).

    Sets each item's ``outcome`` (``ACKED`` / ``DUPLICATE``) or ``decision`` (NAK
    delay or dead letter) and ``error``; acknowledges nothing.  :meth:`apply`
    raises when the batch transaction could not be committed on either path.
    """

    def __init__(
        self,
        config: BridgeConfig,
        session_factory: async_sessionmaker[AsyncSession],
        router: Router,
        *,
        optimistic: bool = True,
        schemas: EventSchemas | None = None,
        schema_observer: SchemaObserver | None = None,
    ) -> None:
        self._config = config
        self._session_factory = session_factory
        self._router = router
        self._optimistic = optimistic
        self._schemas = schemas
        self._schema_observer = schema_observer
        self.optimistic_batches = 0  # committed without savepoints
        self.fallback_batches = 0  # rolled back, then re-run with savepoints

    async def apply(self, items: list[BatchItem]) -> None:
        """Optimistic attempt first; on rollback, the savepoint path decides (module doc)."""
        if self._optimistic:
            try:
                await self._apply(items, savepoints=False)
            except _RolledBack as rolled_back:
                self.fallback_batches += 1
                log.debug(
                    "optimistic batch rolled back; re-running it with a savepoint per delivery",
                    extra={"deliveries": len(items), "cause": str(rolled_back)},
                )
                for item in items:  # nothing of the attempt was committed or acked
                    item.outcome = item.decision = item.error = None
                    item.record = True
                if rolled_back.item is not None:
                    rolled_back.item.prior_failure = rolled_back.error
            else:
                self.optimistic_batches += 1
                return
        await self._apply(items, savepoints=True)

    async def _apply(self, items: list[BatchItem], *, savepoints: bool) -> None:
        """Claim, run handlers, record failures; commit.  Raises on failure.

        Without ``savepoints`` a handler failure or a failed commit raises
        :class:`_RolledBack` after the whole transaction was rolled back.
        """
        use_inbox = self._config.use_inbox
        handlers_ran = False
        async with self._session_factory() as session:
            with skip_publish(session):
                try:
                    async with session.begin():
                        claimed: set[str] | None = None
                        waiting: dict[tuple[str, str], list[store.Waiting]] = {}
                        if use_inbox and items:
                            # the claim also turns capture off (applying a peer's
                            # change: no echo), in the same round trip
                            claimed, waiting = await self._claim(session, items)
                        else:
                            await ensure_capture_off(session)
                        state = _BatchState(claimed, RecordOrder.of(self._config, waiting))
                        for item in items:
                            await self._apply_one(session, item, state, savepoints)
                        await self._end_run(session, state)
                        if use_inbox:
                            await store.mark_failed(session, state.failed, ran=True)
                            await store.mark_failed(session, state.held, ran=False)
                        handlers_ran = True
                except _RolledBack:
                    raise
                except Exception as exc:
                    if handlers_ran and not savepoints:
                        raise _RolledBack(f"commit failed: {exc!r}") from exc
                    raise

    async def _claim(self, session: AsyncSession, items: list[BatchItem]) -> store.Claimed:
        """Claim the batch's records and read those of its resources still waiting for a
        redelivery (one statement, :func:`bridge.inbox._store.claim`)."""
        deliveries = [(i.envelope, i.delivery) for i in items if i.envelope is not None]
        return await store.claim(session, deliveries, stale_after=self._config.ack_wait)

    async def _apply_one(
        self, session: AsyncSession, item: BatchItem, state: _BatchState, savepoints: bool
    ) -> None:
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
                item.decision = Decision(Action.RETRY, delay=state.order.blocked.get(item.key))
                return
            state.seen.add(event_id)
        if exhausted := decide_exhausted(delivery.num_delivered, config=self._config):
            item.decision = exhausted[0]  # the reserved delivery (bridge.routing.router)
            self._failed(state, item, exhausted[1])
            return
        hold = state.order.hold(item.key, envelope, delivery, state.done)
        if hold is not None:  # waits for an earlier event of its record (bridge.inbox._order)
            item.record, item.decision = False, Decision(Action.RETRY, delay=hold[0])
            state.held.append((event_id, hold[1], hold[0]))
            return
        refused = refusal(envelope, self._config)  # before any handler: bridge.routing.version_time
        if refused is not None:  # a Reject: dead letter with its reason, like a handler's
            item.decision = Decision(Action.DEAD_LETTER, reason=refused.reason)
            self._failed(state, item, refused)
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
            resolved = self._resolve(item)
            error = item.prior_failure
            if isinstance(resolved, Exception):
                error = resolved
            elif error is None and not savepoints:
                batch_handler = self._router.batch_handler_for(envelope)
                if batch_handler is not None:
                    await self._join_run(session, state, batch_handler, item, resolved)
                    item.outcome = Outcome.ACKED  # if the run fails, the attempt is rolled back
                    state.done.add(event_id)
                    return
                await self._end_run(session, state)
                error = await _run(session, handler, item, resolved, savepoints)
            elif error is None:
                error = await _run(session, handler, item, resolved, savepoints)
            if error is not None:
                item.decision = decide(
                    error, num_delivered=delivery.num_delivered, config=self._config
                )
                self._failed(state, item, error)
                log.warning(
                    "handler failed" if error is not resolved else "schema version not applicable",
                    extra={
                        "event_id": event_id,
                        "event_type": envelope.event_type,
                        "schema_version": envelope.schema_version,
                        "subject": delivery.subject,
                        "stream_seq": delivery.stream_seq,
                        "deliveries": delivery.num_delivered,
                        "max_deliver": self._config.max_deliver,
                        "action": str(item.decision.action),
                        "delay": item.decision.delay,
                        "error_type": type(error).__name__,
                        "error": str(error)[: store.LAST_ERROR_LIMIT],
                    },
                    # the traceback: here at DEBUG; on the dead letter's line at ERROR
                    exc_info=error if log.isEnabledFor(logging.DEBUG) else None,
                )
                return
        item.outcome = Outcome.ACKED
        state.done.add(event_id)

    async def _join_run(
        self,
        session: AsyncSession,
        state: _BatchState,
        handler: BatchHandler,
        item: BatchItem,
        envelope: Envelope,
    ) -> None:
        """Add a delivery to the open run, first ending a run of another resource type."""
        if state.run_resource != envelope.resource_type:
            await self._end_run(session, state)
            state.run_resource, state.run_handler = envelope.resource_type, handler
        state.run.append((item, envelope))

    @staticmethod
    async def _end_run(session: AsyncSession, state: _BatchState) -> None:
        """Call the open run's batch handler, if any (raises :class:`_RolledBack`)."""
        run, handler = state.run, state.run_handler
        state.run, state.run_resource, state.run_handler = [], None, None
        if run and handler is not None:
            await _run_batch(session, handler, run)

    def _resolve(self, item: BatchItem) -> Envelope | Exception:
        """The envelope the handler gets (current schema version), or the error why not."""
        if item.resolved is None:
            assert item.envelope is not None
            if self._schemas is None:
                item.resolved = item.envelope
            else:
                try:
                    item.resolved = self._schemas.resolve(item.envelope, self._schema_observer)
                except Exception as exc:  # decided like a handler's failure
                    item.resolved = exc
        return item.resolved

    def _failed(self, state: _BatchState, item: BatchItem, error: BaseException) -> None:
        decision = item.decision
        assert decision is not None and item.envelope is not None
        item.error = error
        # Later deliveries of the resource come back no earlier than this one.
        delay = decision.delay if decision.action is Action.RETRY else None
        state.failed.append((item.envelope.event_id, error_text(error), delay or 0.0))
        state.order.block(item.key, delay if delay is not None else self._config.backoff[0])
