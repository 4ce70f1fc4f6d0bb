"""Route envelopes to handlers, and turn a handler's outcome into an acknowledgement.

A handler is ``async def handler(session, envelope) -> None``.  It runs inside
the inbox transaction (see :mod:`bridge.inbox.processor`): it may add, change and flush
rows but must not commit; the bridge commits once, then acks.  Publishing is
suppressed on that session, so applying the other side's change never echoes.

Outcome contract (:func:`decide`):

- return normally → success: ack after the commit;
- raise :class:`~bridge.errors.Retry` → transient: NAK with ``Retry.delay`` or
  ``config.backoff_for(attempt)``;
- raise :class:`~bridge.errors.Reject` → permanent: dead letter with
  ``Reject.reason`` (``rejected``, ``conflict``, ...), then term;
- raise anything else → treated as transient (like ``Retry``);
- a transient failure on the last allowed delivery (``num_delivered >=
  max_deliver``) → dead letter ``max_deliver_exceeded``, then term: the handler
  has had its ``max_deliver`` attempts.
- the **reserved delivery** (:func:`decide_exhausted`): a delivery with
  ``num_delivered > max_deliver`` → dead letter ``max_deliver_exceeded`` at once,
  WITHOUT running the handler (once the inbox has said the event is not already
  applied — an applied one is a duplicate and is acked).  It exists because the
  last attempt may never finish: a process killed (or stalled past ``ack_wait``)
  on attempt ``max_deliver`` leaves the delivery neither applied nor
  dead-lettered.  The server's consumer therefore redelivers without limit
  (``max_deliver = -1``, :func:`bridge.provisioning.specs.server_max_deliver`), so such a
  delivery always comes back once more and is settled here — and if the dead-letter
  publish itself fails (or the process dies during it) it is NAKed and comes back
  again.  No advisory subscription and no direct get are needed, so this holds with
  the least-privilege users of restrictive mode too.

Writes a handler made before it raised are rolled back (with the whole batch
transaction on the optimistic path, with its savepoint on the fallback path).

A handler may run more than once for one delivery, its earlier runs rolled back:
the inbox applies a batch in one transaction without savepoints and, when any
handler in it raises or the commit fails, re-runs the batch (all but the handler
that raised) with a savepoint per delivery (:mod:`bridge.inbox._apply`);
redeliveries after a crash before the commit do the same.
So a handler must keep its effects inside ``session``.  Anything outside it
(another connection or transaction, an HTTP call, an e-mail, process memory) is
not rolled back and must be idempotent, e.g. ``INSERT ... ON CONFLICT DO NOTHING``.

**Batch handlers** (:meth:`Router.on_batch`): ``async def handler(session,
envelopes) -> None`` sees several deliveries of one resource type at once, so an
application can apply N events in a constant number of statements.  Contract,
all-or-raise: apply the envelopes in the order given (several events of one record
arrive in delivery order), keep every effect inside ``session`` (it may run again
after a rollback, like any handler), and raise if ANY envelope cannot be applied —
it need not say which.  The inbox then re-runs each of those deliveries alone as
``handler(session, [envelope])`` with its own savepoint, where its exception
(``Retry`` / ``Reject`` / anything else) decides that delivery exactly as a
per-event handler's would (:mod:`bridge.inbox._apply` has the run rule).  A resource
has either a per-event handler (:meth:`Router.on_resource`) or a batch handler,
never both; an exact event-type registration (:meth:`Router.on`) still wins for its
event type, which is then handled one event at a time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from sqlalchemy.ext.asyncio import AsyncSession

from bridge.config import BridgeConfig
from bridge.envelope import Envelope
from bridge.errors import AttemptsExhausted, ConfigError, EnvelopeError, Reject, Retry

Handler = Callable[[AsyncSession, Envelope], Awaitable[None]]
#: Applies several envelopes of one resource type, all or raise (module doc).
BatchHandler = Callable[[AsyncSession, Sequence[Envelope]], Awaitable[None]]
UnknownEventPolicy = Literal["dead_letter", "ack", "retry"]
UNKNOWN_EVENT_POLICIES: tuple[str, ...] = ("dead_letter", "ack", "retry")

REASON_MALFORMED = "malformed"
REASON_UNKNOWN_EVENT_TYPE = "unknown_event_type"
REASON_MAX_DELIVER = "max_deliver_exceeded"
#: The event's schema_version is one the consumer does not know (bridge.event_schemas).
REASON_UNSUPPORTED_SCHEMA_VERSION = "unsupported_schema_version"
#: The payload does not fit its declared schema (bridge.event_schemas, handlers).
REASON_INVALID_PAYLOAD = "invalid_payload"
#: A version (``occurred_at``, a record's ``updated_at``) later than the receiver's clock
#: plus ``max_clock_skew`` (bridge.routing.version_time); replay it once the clocks agree.
REASON_FUTURE_VERSION = "future_version"
#: The envelope's ``origin`` or ``producer`` is not in ``known_origins``
#: (bridge.routing.version_time).
REASON_UNKNOWN_ORIGIN = "unknown_origin"


class Router:
    """Maps ``event_type`` (exact) or ``resource_type`` (any action) to a handler.

    An exact event-type registration wins over a resource registration.
    Registering the same key twice raises :class:`~bridge.errors.ConfigError`
    (two handlers for one event would make the outcome ambiguous), and so does a
    per-event and a batch handler for one resource type.
    """

    def __init__(self, *, unknown_event_policy: UnknownEventPolicy = "dead_letter") -> None:
        if unknown_event_policy not in UNKNOWN_EVENT_POLICIES:
            raise ConfigError(
                f"unknown_event_policy must be one of {', '.join(UNKNOWN_EVENT_POLICIES)}, "
                f"got {unknown_event_policy!r}"
            )
        self.unknown_event_policy: UnknownEventPolicy = unknown_event_policy
        self._by_event: dict[str, Handler] = {}
        self._by_resource: dict[str, Handler] = {}
        self._batch_by_resource: dict[str, BatchHandler] = {}
        self._batch_single: dict[str, Handler] = {}  # the batch handler, one envelope a call

    def on(self, event_type: str, handler: Handler) -> None:
        """Handle exactly ``event_type`` (e.g. ``"organization.created"``)."""
        if not event_type or "." not in event_type:
            raise ConfigError(f"event_type must look like 'resource.action', got {event_type!r}")
        if event_type in self._by_event:
            raise ConfigError(f"a handler for event type {event_type!r} is already registered")
        self._by_event[event_type] = handler

    def on_resource(self, resource_type: str, handler: Handler) -> None:
        """Handle every action (created/updated/deleted, ...) of ``resource_type``."""
        self._check_free(resource_type)
        self._by_resource[resource_type] = handler

    def on_batch(self, resource_type: str, handler: BatchHandler) -> None:
        """Handle every action of ``resource_type`` several envelopes at a time (module doc)."""
        self._check_free(resource_type)
        self._batch_by_resource[resource_type] = handler

        async def single(session: AsyncSession, envelope: Envelope) -> None:
            await handler(session, (envelope,))

        self._batch_single[resource_type] = single

    def _check_free(self, resource_type: str) -> None:
        if not resource_type:
            raise ConfigError("resource_type must not be empty")
        if resource_type in self._by_resource or resource_type in self._batch_by_resource:
            raise ConfigError(f"a handler for resource {resource_type!r} is already registered")

    def handler_for(self, envelope: Envelope) -> Handler | None:
        """The handler for ``envelope``, or ``None`` (then the unknown-event policy applies).

        For a batch-handled resource: the batch handler called with ``[envelope]``.
        """
        handler = self._by_event.get(envelope.event_type)
        if handler is None:
            handler = self._by_resource.get(envelope.resource_type)
        if handler is None:
            handler = self._batch_single.get(envelope.resource_type)
        return handler

    def batch_handler_for(self, envelope: Envelope) -> BatchHandler | None:
        """The batch handler of ``envelope``'s resource type, unless its event type has its own."""
        if envelope.event_type in self._by_event:
            return None
        return self._batch_by_resource.get(envelope.resource_type)

    @property
    def event_types(self) -> frozenset[str]:
        """Event types registered with :meth:`on`."""
        return frozenset(self._by_event)

    @property
    def resource_types(self) -> frozenset[str]:
        """Resource types registered with :meth:`on_resource` or :meth:`on_batch`."""
        return frozenset(self._by_resource) | frozenset(self._batch_by_resource)

    @property
    def batch_resource_types(self) -> frozenset[str]:
        """Resource types registered with :meth:`on_batch`."""
        return frozenset(self._batch_by_resource)


class Action(StrEnum):
    RETRY = "retry"
    DEAD_LETTER = "dead_letter"


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with a delivery that did not succeed."""

    action: Action
    delay: float | None = None  # NAK delay (RETRY)
    reason: str | None = None  # x-dlq-reason (DEAD_LETTER)


def decide(error: BaseException, *, num_delivered: int, config: BridgeConfig) -> Decision:
    """Map a failure of delivery number ``num_delivered`` (1-based) to a decision.

    See the module doc for the rules; pure, no I/O.
    """
    if isinstance(error, Reject):
        return Decision(Action.DEAD_LETTER, reason=error.reason)
    if isinstance(error, EnvelopeError):
        return Decision(Action.DEAD_LETTER, reason=REASON_MALFORMED)
    if num_delivered >= config.max_deliver:
        return Decision(Action.DEAD_LETTER, reason=REASON_MAX_DELIVER)
    delay = error.delay if isinstance(error, Retry) else None
    if delay is None:
        delay = config.backoff_for(num_delivered)
    return Decision(Action.RETRY, delay=delay)


def decide_exhausted(
    num_delivered: int, *, config: BridgeConfig
) -> tuple[Decision, AttemptsExhausted] | None:
    """Dead letter (and its error) for the reserved delivery, ``num_delivered > max_deliver``.

    ``None`` for every other delivery.  The caller decides with it before running
    the handler, after the inbox check (see the module doc).  Pure, no I/O.
    """
    if num_delivered > config.max_deliver:
        error = AttemptsExhausted(num_delivered, config.max_deliver)
        return Decision(Action.DEAD_LETTER, reason=REASON_MAX_DELIVER), error
    return None


def decide_unknown(
    policy: UnknownEventPolicy, *, num_delivered: int, config: BridgeConfig
) -> Decision | None:
    """Decision for an event no handler is registered for; ``None`` means ack.

    ``retry`` waits for a deployment that knows the type, with the usual
    backoff, and dead-letters it as ``max_deliver_exceeded`` on the last delivery.
    """
    if policy == "ack":
        return None
    if policy == "retry":
        return decide(Retry("unknown event type"), num_delivered=num_delivered, config=config)
    return Decision(Action.DEAD_LETTER, reason=REASON_UNKNOWN_EVENT_TYPE)
