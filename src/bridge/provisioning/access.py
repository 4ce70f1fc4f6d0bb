"""Runtime access checks for apps without JetStream management permissions.

In restrictive mode an app's NATS user has only the subjects listed by
:func:`bridge.provisioning.permissions.app_permissions`; it cannot call ``STREAM.INFO`` or
``CONSUMER.INFO``.  :func:`verify_runtime_access` still fails fast at start-up,
with an error naming what is missing, using only operations those permissions
allow and that change nothing on the server:

- **stream + publish**: a JetStream publish to the app's own subject (and its
  dead-letter subject) carrying ``Nats-Expected-Stream: <stream>`` and an
  impossible ``Nats-Expected-Last-Sequence``.  The server answers with error
  10071 ("wrong last sequence") and stores nothing.  That answer proves the
  publish permission, the reply-inbox subscription, and that the subject is
  captured by the configured stream.  No responders → the stream is missing.
- **pull consumer**: a pull request on ``$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>``
  with ``batch=1, no_wait=true, max_bytes=1``.  No message fits in one byte, so
  nothing is delivered and no delivery count moves: the consumer answers with a
  status (404 No Messages, 409 Message Size Exceeds MaxBytes, ...).  No
  responders → the consumer (or stream) is missing; 409 "Consumer is push based"
  → the consumer exists in the other mode.
- **push consumer**: no request subject exists for push consumers, so the probe
  joins the queue group on the deliver subject and waits for proof of life: an
  idle heartbeat (sent every 5 s while idle), a flow-control request (answered),
  or a delivery — which is NAKed with a 1 s delay so a real member gets it (that
  costs the message one delivery attempt and a second).  The probe subscribes with
  ``max_msgs=1`` so the server removes it from the group with that first message.  Nothing within
  ``heartbeat_wait`` → the consumer is missing.  Run the probe before the app's
  own push consumer subscribes: other members of the group share the heartbeats.
- **ack / flow-control subjects**: a publish to ``$JS.ACK.<stream>.<durable>.probe``
  (and ``$JS.FC...probe``), which the server ignores (not an ack reply token
  layout) — only a permissions violation would come back.

Denied operations are recognised by the server's "Permissions Violation"
errors (collected by :class:`~bridge.transport.connection.Connection`).  Each probe waits
for a round trip that the server answers only after it has judged the probe
(:func:`bridge.provisioning._probes.server_verdict`), so a verdict is never a race with
the error: a denial is known as soon as the server has said so, and "allowed"
means the server handled the operation without refusing it.

:func:`check_permissions` runs the same probes on a bare client and reports one
:class:`PermissionCheck` per needed subject (for ``bridge doctor``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from nats.aio.client import Client

from bridge.config import BridgeConfig
from bridge.errors import (
    BridgeError,
    DriftError,
    MissingConsumerError,
    MissingStreamError,
    PermissionDeniedError,
)
from bridge.provisioning._probes import (
    Probe,
    probe_fire_and_forget,
    probe_publish,
    probe_pull_consumer,
    probe_push_consumer,
    probe_subject,
    probe_subscribe,
)
from bridge.provisioning.permissions import (
    ack_subjects,
    app_permissions,
    flow_control_subjects,
    inbox_prefix,
    msg_next_subject,
)
from bridge.provisioning.specs import PUSH_IDLE_HEARTBEAT
from bridge.transport.connection import Connection

log = logging.getLogger("bridge.access")

_PROVISION_HINT = "run the provisioner (bridge-provision apply) with admin credentials"


@dataclass(frozen=True, slots=True)
class PermissionCheck:
    """Result of trying one operation the app needs."""

    operation: Literal["publish", "subscribe"]
    subject: str
    allowed: bool
    detail: str = ""


# -- start-up verification ----------------------------------------------------------
async def verify_runtime_access(
    connection: Connection,
    config: BridgeConfig,
    *,
    timeout: float = 3.0,
    heartbeat_wait: float | None = None,
) -> None:
    """Prove, without management permissions, that the app can run; raise otherwise.

    Raises :class:`MissingStreamError`, :class:`MissingConsumerError`,
    :class:`DriftError` (consumer exists in the other mode, or the subject belongs
    to another stream) or :class:`PermissionDeniedError` naming the stream,
    consumer or denied subject.  Pull apps get an answer within ``timeout``; push
    apps wait up to ``heartbeat_wait`` (default two idle heartbeats + 1 s) for
    the consumer to show itself.  Nothing is stored, acked or consumed.
    """
    nc = connection.nc
    start = len(connection.permission_errors)

    def violations() -> Sequence[str]:
        # Only violations raised since this check began count.
        return list(connection.permission_errors)[min(start, 50) :]

    stream = config.stream_name
    inbox = f"{inbox_prefix(config)}.>"
    inbox_denied = PermissionDeniedError(
        f"NATS user may not subscribe to its reply inbox {inbox} (PubAcks and fetched "
        "messages cannot arrive); grant it (bridge-provision permissions) or set "
        "credentials.inbox_prefix to the prefix the user may use"
    )
    targets = [config.subjects.publish] + ([config.subjects.dlq] if config.use_dlq else [])
    for subject in targets:
        result = await probe_publish(nc, subject, stream, timeout=timeout, violations=violations)
        _fail_on(result, {
            Probe.NO_RESPONDERS: MissingStreamError(
                f"stream {stream!r} does not exist or does not capture subject {subject!r} "
                f"(no JetStream answer to a publish); {_PROVISION_HINT}"
            ),
            Probe.WRONG_STREAM: DriftError(
                f"subject {subject!r} is captured by a stream other than {stream!r}; "
                f"{_PROVISION_HINT}"
            ),
            Probe.DENIED: PermissionDeniedError(f"NATS user may not publish to {subject!r}"),
            Probe.INBOX_DENIED: inbox_denied,
            Probe.NO_ANSWER: PermissionDeniedError(
                f"no PubAck for a probe on {subject!r} within {timeout}s: "
                "NATS or JetStream is unavailable"
            ),
        })  # fmt: skip

    durable = config.subjects.durable
    if config.consumer_mode == "pull":
        result = await probe_pull_consumer(nc, config, timeout=timeout, violations=violations)
        pull = msg_next_subject(config)
        _fail_on(result, {
            Probe.NO_RESPONDERS: MissingConsumerError(
                f"consumer {durable!r} on stream {stream!r} does not exist (no answer to a "
                f"pull request); {_PROVISION_HINT}"
            ),
            Probe.PUSH_BASED: DriftError(
                f"consumer {durable!r} on stream {stream!r} is push-based but consumer_mode "
                f"is pull; {_PROVISION_HINT}"
            ),
            Probe.DENIED: PermissionDeniedError(
                f"NATS user may not publish pull requests to {pull!r}"
            ),
            Probe.INBOX_DENIED: inbox_denied,
            Probe.NO_ANSWER: PermissionDeniedError(
                f"no answer to a pull request on {pull!r} within {timeout}s"
            ),
        })  # fmt: skip
    else:
        wait = heartbeat_wait if heartbeat_wait is not None else 2 * PUSH_IDLE_HEARTBEAT + 1
        result = await probe_push_consumer(nc, config, wait=wait, violations=violations)
        deliver, group = config.deliver_subject, config.deliver_group
        _fail_on(result, {
            Probe.DENIED: PermissionDeniedError(
                f"NATS user may not subscribe to {deliver!r} in queue group {group!r}"
            ),
            Probe.NO_ANSWER: PermissionDeniedError(
                f"no answer from NATS to a subscription on {deliver!r}"
            ),
        })  # fmt: skip
        if result is not Probe.OK:
            raise MissingConsumerError(
                f"push consumer {durable!r} on stream {stream!r} is missing: no heartbeat or "
                f"delivery on {deliver!r} (group {group!r}) within {wait:g}s (or it is a pull "
                f"consumer); {_PROVISION_HINT}"
            )

    extra = [ack_subjects(config)]
    if config.consumer_mode == "push":
        extra.append(flow_control_subjects(config))
    for pattern in extra:
        result = await probe_fire_and_forget(
            nc, probe_subject(pattern), timeout=timeout, violations=violations
        )
        _fail_on(result, {
            Probe.DENIED: PermissionDeniedError(f"NATS user may not publish to {pattern!r}"),
            Probe.NO_ANSWER: PermissionDeniedError(
                f"no answer from NATS to a publish on {pattern!r}"
            ),
        })  # fmt: skip
    leftover = violations()
    if leftover:
        raise PermissionDeniedError("permission violations during start-up: " + "; ".join(leftover))
    log.info(
        "runtime access verified",
        extra={"stream": stream, "durable": durable, "consumer_mode": config.consumer_mode},
    )


def _fail_on(result: Probe, errors: Mapping[Probe, BridgeError]) -> None:
    """Raise the error a probe's result means, if it means one."""
    error = errors.get(result)
    if error is not None:
        raise error


# -- per-subject report (bridge doctor) -----------------------------------------------
@contextlib.asynccontextmanager
async def _violation_tap(nc: Client) -> AsyncIterator[list[str]]:
    """Collect permission violations reported on ``nc`` while the block runs.

    nats-py delivers them only to the ``error_cb`` given at connect time, so the
    callback is wrapped for the duration and restored afterwards.
    """
    seen: list[str] = []
    original = nc._error_cb

    async def tap(exc: Exception) -> None:
        if "permissions violation" in str(exc).lower():
            seen.append(str(exc))
        await original(exc)

    nc._error_cb = tap
    try:
        yield seen
    finally:
        nc._error_cb = original


def _check(
    operation: Literal["publish", "subscribe"], subject: str, result: Probe
) -> PermissionCheck:
    details = {
        Probe.OK: "allowed",
        Probe.NO_RESPONDERS: "allowed (but nothing answers: stream or consumer missing)",
        Probe.WRONG_STREAM: "allowed (but the subject belongs to another stream)",
        Probe.PUSH_BASED: "allowed (but the consumer is push-based)",
        Probe.DENIED: "denied by the server",
        Probe.INBOX_DENIED: "not confirmed: the reply inbox is denied, so no answer can arrive",
        Probe.NO_ANSWER: "not confirmed: no answer from NATS (or JetStream) in time",
    }
    allowed = result not in (Probe.DENIED, Probe.INBOX_DENIED, Probe.NO_ANSWER)
    return PermissionCheck(operation, subject, allowed, details[result])


async def check_permissions(
    nc: Client, config: BridgeConfig, *, timeout: float = 2.0
) -> list[PermissionCheck]:
    """Try every operation ``config``'s app needs; one :class:`PermissionCheck` each.

    Same safe probes as :func:`verify_runtime_access` (nothing is stored or
    consumed), one after the other, each judged by the server before the next
    starts; the push deliver-group subscription is checked by subscribing and
    leaving at once — a delivery that slips in meanwhile is handed back (NAK).
    ``allowed`` is True only when the server handled the operation without refusing
    it; an operation it did not answer within ``timeout`` is reported not allowed.
    """
    perms = app_permissions(config)
    stream = config.stream_name
    checks: list[PermissionCheck] = []
    async with _violation_tap(nc) as seen:

        def violations() -> Sequence[str]:
            return list(seen)

        for entry in perms.subscribe:
            subject, _, queue = entry.partition(" ")
            result = await probe_subscribe(
                nc, probe_subject(subject), queue=queue, timeout=timeout, violations=violations
            )
            checks.append(_check("subscribe", entry, result))
        for subject in perms.publish:
            if subject in (config.subjects.publish, config.subjects.dlq):
                result = await probe_publish(
                    nc, subject, stream, timeout=timeout, violations=violations
                )
            elif subject == msg_next_subject(config):
                result = await probe_pull_consumer(
                    nc, config, timeout=timeout, violations=violations
                )
            else:
                # A literal subject (the peer's reconcile subject) is probed as itself:
                # its responder ignores a message without a reply subject.
                result = await probe_fire_and_forget(
                    nc, probe_subject(subject), timeout=timeout, violations=violations
                )
            checks.append(_check("publish", subject, result))
    return checks
