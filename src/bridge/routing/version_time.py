"""Versions from the future and unknown origins: refused before anything applies them.

Last-writer-wins compares timestamps, so a timestamp far ahead of every clock wins
every comparison for as long as it stays ahead, and one at ``datetime.max`` can never be
written over at all.  One rule bounds that, implemented here once:

- **future version**: a version time later than ``now + max_clock_skew`` (the receiver's
  clock, :attr:`bridge.config.BridgeConfig.clock`) is refused with
  ``Reject(reason="future_version")`` — a dead letter, never applied.  It is replayable
  (``bridge dlq replay``): once the clocks agree, or time has caught up with it, the
  same version passes.  A version *at* ``now + max_clock_skew`` still passes.
- **unknown origin**: an envelope whose ``origin`` (the system where the change was made;
  :class:`~bridge.envelope.Envelope` falls back to ``producer`` when the wire has none)
  or ``producer`` is not in ``known_origins`` (``app_name``, ``destination_app`` and what
  the config adds) is refused with ``Reject(reason="unknown_origin")``.

Where it applies:

- the inbox checks every envelope (:func:`refusal`: origin, producer, ``occurred_at``)
  after the duplicate check and before its handler or the unknown-event policy
  (:mod:`bridge.inbox._apply`), so a refused event is a dead letter with its own reason
  and its inbox record is ``dead_lettered``, whatever handler it has;
- the record version inside a payload (e.g. ``updated_at``) is the domain's: its handlers
  call :func:`check_version_time` (the services' sync handlers do, on the per-event and
  the batch path), and local writes use :func:`beyond_skew` to refuse building on a
  stored version from the future (:mod:`bridge.sync.versions`).

Pure functions; the only side effect is the warning :func:`refusal` logs.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from bridge.config import BridgeConfig
from bridge.envelope import Envelope, format_timestamp, parse_timestamp
from bridge.errors import EnvelopeError, Reject
from bridge.routing.outcomes import REASON_FUTURE_VERSION, REASON_UNKNOWN_ORIGIN

log = logging.getLogger("bridge.inbox")


def beyond_skew(value: datetime, *, now: datetime, max_clock_skew: float) -> bool:
    """True when ``value`` is later than ``now + max_clock_skew`` seconds (THE rule).

    Computed as a difference, so no datetime arithmetic can overflow, even for
    ``datetime.max``.  Both datetimes must be timezone-aware.
    """
    return value - now > timedelta(seconds=max_clock_skew)


def check_version_time(
    value: datetime, *, now: datetime, max_clock_skew: float, what: str = "version"
) -> None:
    """Raise ``Reject(reason="future_version")`` when ``value`` is beyond the skew bound.

    ``what`` names the field in the message (e.g. ``"organization.updated payload
    updated_at"``), which becomes the dead letter's error message.
    """
    if beyond_skew(value, now=now, max_clock_skew=max_clock_skew):
        raise Reject(
            f"{what} {format_timestamp(value)} is more than max_clock_skew "
            f"({max_clock_skew:g}s) ahead of this side's clock ({format_timestamp(now)}); "
            "never applied: replay the dead letter once the clocks agree",
            reason=REASON_FUTURE_VERSION,
        )


def refusal(envelope: Envelope, config: BridgeConfig) -> Reject | None:
    """Why ``envelope`` must not be applied (a ``Reject`` to dead-letter it), or ``None``.

    Checks ``origin``, then ``producer`` against ``config.known_origins``, then
    ``occurred_at`` against ``config.clock()`` + ``config.max_clock_skew``.
    """
    refused: Reject | None = None
    for role, name in (("origin", envelope.origin), ("producer", envelope.producer)):
        if name not in config.known_origins:
            known = ", ".join(sorted(config.known_origins))
            refused = Reject(
                f"{role} {name!r} is not a known system (known_origins: {known})",
                reason=REASON_UNKNOWN_ORIGIN,
            )
            break
    if refused is None:
        try:
            occurred_at = parse_timestamp(envelope.occurred_at)
            check_version_time(
                occurred_at,
                now=config.clock(),
                max_clock_skew=config.max_clock_skew,
                what="occurred_at",
            )
        except EnvelopeError:  # decoding validated it; nothing to bound otherwise
            pass
        except Reject as exc:
            refused = exc
    if refused is not None:
        log.warning(
            "envelope refused before its handler",
            extra={
                "event_id": envelope.event_id,
                "event_type": envelope.event_type,
                "producer": envelope.producer,
                "origin": envelope.origin,
                "occurred_at": envelope.occurred_at,
                "reason": refused.reason,
                "error": str(refused),
            },
        )
    return refused
