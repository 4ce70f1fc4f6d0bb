"""What a handler's outcome becomes: an ack, a NAK with a delay, or a dead letter.

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

An event no handler is registered for follows the router's unknown-event policy
(:func:`decide_unknown`).  The ``REASON_*`` constants are the dead-letter reasons
(``x-dlq-reason``) the bridge itself writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from bridge.config import BridgeConfig
from bridge.errors import AttemptsExhausted, EnvelopeError, Reject, Retry

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
