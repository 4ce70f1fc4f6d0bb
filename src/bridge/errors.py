"""The single exception hierarchy of the bridge.

Every error the library raises derives from :class:`BridgeError`, so callers can
catch one type at a seam.  Handler-outcome exceptions (:class:`Retry`,
:class:`Reject`) live here too: the router turns them into a delayed NAK or a
dead letter.
"""

from __future__ import annotations


class BridgeError(Exception):
    """Base of every error raised by ``bridge``."""


class ConfigError(BridgeError, ValueError):
    """A configuration value is invalid; raised at construction, never later."""


class ConnectionError(BridgeError):
    """NATS is unreachable or the connection is closed."""


class PublishError(BridgeError):
    """A publish did not get a PubAck (timeout, no responders, server error).

    The envelope may or may not be stored: callers retry with the same
    ``Nats-Msg-Id`` so the server's duplicate window collapses the retry.

    ``rejected`` tells the two kinds apart: ``True`` when the server (or the
    client, before sending) refused *this message* — a 400 from JetStream such as
    a message over the stream's size limit, or a payload over the server's
    maximum — so sending it again cannot succeed; ``False`` when JetStream was
    unavailable (no PubAck in time, no responders, no stream leader, connection
    lost), which says nothing about the message and passes by itself.
    """

    def __init__(self, message: str, *, rejected: bool = False) -> None:
        super().__init__(message)
        self.rejected = rejected


class PayloadTooLargeError(PublishError):
    """The message (headers and body) is larger than the server's ``max_payload``; it
    was not sent.  Always ``rejected``.  ``limit`` is the server's maximum and
    ``size`` the message's, both in bytes."""

    def __init__(self, message: str, *, size: int, limit: int) -> None:
        super().__init__(message, rejected=True)
        self.size = size
        self.limit = limit


class SchemaError(BridgeError):
    """The database lacks the bridge's tables or a synced table's capture trigger, or
    holds a trigger installed for another definition (versions, columns); the message
    names each and the migration or call that fixes it."""


class ProvisioningError(BridgeError):
    """Stream or consumer is missing, drifted, or may not be managed."""


class MissingStreamError(ProvisioningError):
    """The stream does not exist (restrictive mode never creates it)."""


class MissingConsumerError(ProvisioningError):
    """A durable consumer does not exist."""


class DriftError(ProvisioningError):
    """The server's stream or consumer differs from the desired spec."""


class PermissionDeniedError(ProvisioningError):
    """The NATS user lacks a permission the configured mode needs."""


class EnvelopeError(BridgeError):
    """A message body or its headers do not form a valid envelope (malformed)."""


class HandlerOutcome(BridgeError):
    """Base of the exceptions a handler raises to choose what happens to a delivery."""


class Retry(HandlerOutcome):
    """Transient failure: NAK with the backoff delay for this attempt.

    ``delay`` overrides the schedule for this attempt when given (seconds).
    """

    def __init__(self, reason: str = "retry", *, delay: float | None = None) -> None:
        super().__init__(reason)
        self.delay = delay


class Reject(HandlerOutcome):
    """Permanent failure: dead letter with ``reason``, then terminate the delivery."""

    def __init__(self, message: str, *, reason: str = "rejected") -> None:
        super().__init__(message)
        self.reason = reason


class DeadLetterError(BridgeError):
    """Publishing a dead letter failed; the original delivery is left unacked."""


class DeadLetterNotFoundError(BridgeError, LookupError):
    """No dead letter is stored at the given DLQ stream sequence."""


class ReconcileError(BridgeError):
    """A reconciliation pass could not run or finish (peer unreachable, bad reply, limits)."""


class ReconcileBusyError(ReconcileError):
    """Another reconciliation of this app holds the advisory lock; this pass did not run."""


class ReconcileRefusedError(ReconcileError):
    """A reconciliation request was refused.  ``code`` says why, from a fixed set
    (:data:`bridge.reconcile._protocol.REFUSALS`: ``bad_request``, ``too_large``,
    ``unknown_resource``, ``busy``, ``timeout``, ``internal``); ``request_id`` names the
    responder's log line that holds the details (a refusal carries none)."""

    def __init__(self, message: str, *, code: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.request_id = request_id


class ReplayRefusedError(BridgeError):
    """A dead letter that cannot be replayed (nothing was published for it).

    ``reason``: ``malformed`` (the body is not an envelope) or ``foreign_subject``
    (the letter names an original subject other than this app's consume subject, a
    forged or misplaced letter).  ``seq`` is the letter's stream sequence.
    """

    def __init__(self, message: str, *, seq: int, reason: str) -> None:
        super().__init__(message)
        self.seq = seq
        self.reason = reason


class AttemptsExhausted(BridgeError):
    """A delivery came after its ``max_deliver`` handler attempts (the reserved delivery).

    Its last attempt never finished — the process was killed or stalled past
    ``ack_wait`` — so it is dead-lettered without running the handler again
    (:func:`bridge.routing.outcomes.decide_exhausted`).
    """

    def __init__(self, num_delivered: int, max_deliver: int) -> None:
        super().__init__(
            f"delivery {num_delivered} after {max_deliver} attempts: the last attempt never "
            "finished (process killed or stalled past ack_wait)"
        )


class AdminCredentialsError(PermissionDeniedError):
    """A command needs the JetStream API (admin credentials) and the NATS user may
    not use it; the message names the command, the user and what to run it with."""


class IdentityError(BridgeError):
    """The id generator cannot issue an id, or a value is not an id of the scheme
    (bridge.ids).  ``code`` says why, from a fixed set (:data:`bridge.ids.ERROR_CODES`):
    ``settings_missing``, ``system_unset``, ``system_out_of_range``, ``clock_behind``,
    ``exhausted``, ``out_of_range``, ``not_installed``, ``scheme_mismatch``."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


class InvalidIdError(IdentityError, ValueError):
    """A value is not an id of the scheme (``code``: ``out_of_range`` or
    ``system_out_of_range``); a ``ValueError`` too, so validators of untrusted input
    (payload validators, request models) report it as a bad field."""


class CatalogError(BridgeError, ValueError):
    """An event catalog or payload JSON Schema cannot be read or compared
    (``bridge schema diff``: a file that is not JSON, a reference that does not resolve)."""
