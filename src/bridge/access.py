"""Runtime access checks for apps without JetStream management permissions.

In restrictive mode an app's NATS user has only the subjects listed by
:func:`bridge.permissions.app_permissions`; it cannot call ``STREAM.INFO`` or
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

Denied operations are recognised by the server's asynchronous "Permissions
Violation" errors (collected by :class:`~bridge.connection.Connection`), so a
denial is reported as soon as the server says so instead of after a timeout.

:func:`check_permissions` runs the same probes on a bare client and reports one
:class:`PermissionCheck` per needed subject (for ``bridge doctor``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from bridge.config import BridgeConfig
from bridge.connection import Connection
from bridge.durations import to_nanos
from bridge.errors import (
    DriftError,
    MissingConsumerError,
    MissingStreamError,
    PermissionDeniedError,
)
from bridge.permissions import (
    ack_subjects,
    app_permissions,
    flow_control_subjects,
    inbox_prefix,
    msg_next_subject,
)
from bridge.provisioning import PUSH_IDLE_HEARTBEAT

log = logging.getLogger("bridge.access")

# JetStream never reaches this last sequence, so the guarded publish is always refused.
IMPOSSIBLE_LAST_SEQUENCE = str(2**62)
# A delivery that reaches a push probe goes back with a short delay: NAKed without
# one, the server redelivers before it has noticed the probe left, into the void,
# and the message then waits out ack_wait.  One second later it finds a real member.
PROBE_NAK_DELAY = 1.0
PROBE_NAK = b'-NAK {"delay": ' + str(to_nanos(PROBE_NAK_DELAY)).encode() + b"}"
WRONG_LAST_SEQUENCE = 10071
STREAM_MISMATCH = 10060
_VIOLATION = re.compile(
    r'permissions violation for (publish|subscription) to "([^"]+)"(?: using queue "([^"]+)")?',
    re.IGNORECASE,
)
_PROVISION_HINT = "run the provisioner (bridge-provision apply) with admin credentials"

Violations = Callable[[], Sequence[str]]


class Probe(StrEnum):
    """What one probe learned."""

    OK = "ok"
    NO_RESPONDERS = "no_responders"
    WRONG_STREAM = "wrong_stream"
    PUSH_BASED = "push_based"
    DENIED = "denied"
    NO_ANSWER = "no_answer"


@dataclass(frozen=True, slots=True)
class PermissionCheck:
    """Result of trying one operation the app needs."""

    operation: Literal["publish", "subscribe"]
    subject: str
    allowed: bool
    detail: str = ""


def parse_violation(text: str) -> tuple[str, str, str | None] | None:
    """``(operation, subject, queue)`` of a server "Permissions Violation" error.

    nats-py hands the text over lower-cased: the subject may differ in case.
    """
    match = _VIOLATION.search(text)
    if match is None:
        return None
    operation = "publish" if match.group(1).lower() == "publish" else "subscribe"
    return operation, match.group(2), match.group(3)


def _denied(violations: Sequence[str], operation: str, subject: str) -> bool:
    # nats-py lower-cases the server's error text, so subjects compare case-insensitively.
    wanted = subject.lower()
    for text in violations:
        parsed = parse_violation(text)
        if parsed is not None and parsed[0] == operation and parsed[1].lower() == wanted:
            return True
    return False


def _denied_prefix(violations: Sequence[str], operation: str, prefix: str) -> bool:
    wanted = prefix.lower()
    for text in violations:
        parsed = parse_violation(text)
        if parsed is not None and parsed[0] == operation and parsed[1].lower().startswith(wanted):
            return True
    return False


async def _flush(nc: Client, timeout: float) -> None:
    """Round trip to the server; a failed flush is left to the probe's own timeout."""
    with contextlib.suppress(Exception):
        await nc.flush(timeout=max(1, math.ceil(timeout)))


#: How often a pending probe looks for an asynchronously reported permission violation.
VIOLATION_POLL = 0.02


async def _request_probe(
    nc: Client,
    subject: str,
    *,
    payload: bytes,
    headers: dict[str, str] | None,
    timeout: float,
    violations: Violations,
) -> tuple[Probe, Msg | None]:
    """Send a request; return early with DENIED once the server reports a violation."""
    task = asyncio.ensure_future(nc.request(subject, payload, timeout=timeout, headers=headers))
    try:
        # The server answers a denied PUB with -ERR before it answers the flush's
        # PING, but nats-py hands errors to its callback on another task: under load
        # the violation is recorded a little after the flush returns, so keep looking
        # for it while the request is pending.
        await _flush(nc, timeout)
        while not task.done():
            if _denied(violations(), "publish", subject):
                return Probe.DENIED, None
            await asyncio.wait({task}, timeout=VIOLATION_POLL)
        try:
            msg = await task
        except NoRespondersError:
            return Probe.NO_RESPONDERS, None
        except (TimeoutError, NatsTimeoutError):
            if _denied(violations(), "publish", subject):
                return Probe.DENIED, None
            return Probe.NO_ANSWER, None
        return Probe.OK, msg
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


async def probe_publish(
    nc: Client, subject: str, stream: str, *, timeout: float, violations: Violations
) -> Probe:
    """Guarded JetStream publish that the server refuses without storing anything."""
    headers = {
        "Nats-Expected-Stream": stream,
        "Nats-Expected-Last-Sequence": IMPOSSIBLE_LAST_SEQUENCE,
    }
    result, msg = await _request_probe(
        nc, subject, payload=b"", headers=headers, timeout=timeout, violations=violations
    )
    if result is not Probe.OK or msg is None:
        return result
    try:
        reply: dict[str, Any] = json.loads(msg.data or b"{}")
    except ValueError:
        return Probe.NO_ANSWER
    code = int((reply.get("error") or {}).get("err_code", 0))
    if code == STREAM_MISMATCH:
        return Probe.WRONG_STREAM
    if code == WRONG_LAST_SEQUENCE:
        return Probe.OK
    if not reply.get("error"):
        # Only a server ignoring the expected-sequence header stores the probe;
        # say so loudly instead of hiding it.
        log.error("publish probe was stored", extra={"subject": subject, "reply": reply})
    return Probe.OK


async def probe_pull_consumer(
    nc: Client, config: BridgeConfig, *, timeout: float, violations: Violations
) -> Probe:
    """A pull request that no message can satisfy (``max_bytes=1``)."""
    body = json.dumps({"batch": 1, "no_wait": True, "max_bytes": 1}).encode()
    subject = msg_next_subject(config)
    result, msg = await _request_probe(
        nc, subject, payload=body, headers=None, timeout=timeout, violations=violations
    )
    if result is not Probe.OK or msg is None:
        return result
    headers = msg.headers or {}
    description = str(headers.get("Description", "")).lower()
    if not headers.get("Status") and msg.reply:
        # A real delivery (a server that ignored max_bytes): give it straight back.
        await nc.publish(msg.reply, b"-NAK")
    if "push based" in description:
        return Probe.PUSH_BASED
    return Probe.OK


async def probe_push_consumer(
    nc: Client, config: BridgeConfig, *, wait: float, violations: Violations
) -> Probe:
    """Join the deliver group and wait for a heartbeat, flow-control request or delivery."""
    alive = asyncio.Event()

    async def on_message(msg: Msg) -> None:
        headers = msg.headers or {}
        if msg.reply and headers.get("Status") == "100":
            await nc.publish(msg.reply, b"")  # flow-control request: answer it
        elif msg.reply:
            await nc.publish(msg.reply, PROBE_NAK)  # a delivery: give it back
        alive.set()

    # max_msgs=1: the server drops the probe from the group as it hands over the
    # first message, so a NAKed delivery is redelivered to a real member and can
    # never come back to a probe that is about to leave (it would sit out ack_wait).
    sub = await nc.subscribe(
        config.deliver_subject, queue=config.deliver_group, cb=on_message, max_msgs=1
    )
    try:
        await _flush(nc, min(wait, 5.0))
        if _denied(violations(), "subscribe", config.deliver_subject):
            return Probe.DENIED
        try:
            await asyncio.wait_for(alive.wait(), wait)
        except TimeoutError:
            if _denied(violations(), "subscribe", config.deliver_subject):
                return Probe.DENIED
            return Probe.NO_RESPONDERS
        return Probe.OK
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def probe_fire_and_forget(
    nc: Client, subject: str, *, timeout: float, violations: Violations
) -> Probe:
    """Publish a message the server ignores; only a violation can come back."""
    await nc.publish(subject, b"")
    await _flush(nc, timeout)
    return Probe.DENIED if _denied(violations(), "publish", subject) else Probe.OK


async def probe_subscribe(
    nc: Client, subject: str, *, timeout: float, violations: Violations
) -> Probe:
    sub = await nc.subscribe(subject)
    try:
        await _flush(nc, timeout)
        return Probe.DENIED if _denied(violations(), "subscribe", subject) else Probe.OK
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


def _probe_subject(pattern: str) -> str:
    """A concrete subject under ``<prefix>.>`` that the server does not act on."""
    return pattern[: -len(">")] + "probe"


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
    inbox = f"{inbox_prefix(config)}."
    targets = [config.subjects.publish] + ([config.subjects.dlq] if config.use_dlq else [])
    for subject in targets:
        result = await probe_publish(nc, subject, stream, timeout=timeout, violations=violations)
        if result is Probe.NO_RESPONDERS:
            raise MissingStreamError(
                f"stream {stream!r} does not exist or does not capture subject {subject!r} "
                f"(no JetStream answer to a publish); {_PROVISION_HINT}"
            )
        if result is Probe.WRONG_STREAM:
            raise DriftError(
                f"subject {subject!r} is captured by a stream other than {stream!r}; "
                f"{_PROVISION_HINT}"
            )
        if result is Probe.DENIED:
            raise PermissionDeniedError(f"NATS user may not publish to {subject!r}")
        if result is Probe.NO_ANSWER:
            if _denied_prefix(violations(), "subscribe", inbox):
                raise PermissionDeniedError(
                    f"NATS user may not subscribe to its reply inbox {inbox}> "
                    "(PubAcks cannot arrive; grant it or set credentials.inbox_prefix)"
                )
            raise PermissionDeniedError(
                f"no PubAck for a probe on {subject!r} within {timeout}s: the user may lack "
                f"the reply-inbox subscription {inbox}> or JetStream is unavailable"
            )

    durable = config.subjects.durable
    if config.consumer_mode == "pull":
        result = await probe_pull_consumer(nc, config, timeout=timeout, violations=violations)
        missing = f"consumer {durable!r} on stream {stream!r} does not exist"
        if result is Probe.NO_RESPONDERS:
            raise MissingConsumerError(
                f"{missing} (no answer to a pull request); {_PROVISION_HINT}"
            )
        if result is Probe.PUSH_BASED:
            raise DriftError(
                f"consumer {durable!r} on stream {stream!r} is push-based but consumer_mode "
                f"is pull; {_PROVISION_HINT}"
            )
        if result is Probe.DENIED:
            raise PermissionDeniedError(
                f"NATS user may not publish pull requests to {msg_next_subject(config)!r}"
            )
        if result is Probe.NO_ANSWER:
            raise PermissionDeniedError(
                f"no answer to a pull request on {msg_next_subject(config)!r} within {timeout}s"
            )
    else:
        wait = heartbeat_wait if heartbeat_wait is not None else 2 * PUSH_IDLE_HEARTBEAT + 1
        result = await probe_push_consumer(nc, config, wait=wait, violations=violations)
        if result is Probe.DENIED:
            raise PermissionDeniedError(
                f"NATS user may not subscribe to {config.deliver_subject!r} "
                f"in queue group {config.deliver_group!r}"
            )
        if result is not Probe.OK:
            raise MissingConsumerError(
                f"push consumer {durable!r} on stream {stream!r} is missing: no heartbeat or "
                f"delivery on {config.deliver_subject!r} (group {config.deliver_group!r}) "
                f"within {wait:g}s (or it is a pull consumer); {_PROVISION_HINT}"
            )

    extra = [ack_subjects(config)]
    if config.consumer_mode == "push":
        extra.append(flow_control_subjects(config))
    for pattern in extra:
        subject = _probe_subject(pattern)
        if (
            await probe_fire_and_forget(nc, subject, timeout=timeout, violations=violations)
            is Probe.DENIED
        ):
            raise PermissionDeniedError(f"NATS user may not publish to {pattern!r}")
    leftover = violations()
    if leftover:
        raise PermissionDeniedError("permission violations during start-up: " + "; ".join(leftover))
    log.info(
        "runtime access verified",
        extra={"stream": stream, "durable": durable, "consumer_mode": config.consumer_mode},
    )


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
        Probe.NO_ANSWER: "no answer (reply inbox denied or JetStream unavailable)",
    }
    allowed = result not in (Probe.DENIED, Probe.NO_ANSWER)
    return PermissionCheck(operation, subject, allowed, details[result])


async def check_permissions(
    nc: Client, config: BridgeConfig, *, timeout: float = 2.0
) -> list[PermissionCheck]:
    """Try every operation ``config``'s app needs; one :class:`PermissionCheck` each.

    Same safe probes as :func:`verify_runtime_access` (nothing is stored or
    consumed); the push deliver-group subscription is checked by subscribing and
    leaving at once — a delivery that slips in meanwhile is NAKed without delay.
    """
    perms = app_permissions(config)
    stream = config.stream_name
    async with _violation_tap(nc) as seen:

        def violations() -> Sequence[str]:
            return list(seen)

        async def publish_check(subject: str) -> PermissionCheck:
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
                concrete = _probe_subject(subject) if subject.endswith(">") else subject
                result = await probe_fire_and_forget(
                    nc, concrete, timeout=timeout, violations=violations
                )
            return _check("publish", subject, result)

        async def subscribe_check(entry: str) -> PermissionCheck:
            subject, _, queue = entry.partition(" ")
            if queue:
                result = await _probe_queue_subscribe(
                    nc, subject, queue, timeout=timeout, violations=violations
                )
            else:
                concrete = _probe_subject(subject) if subject.endswith(">") else subject
                result = await probe_subscribe(nc, concrete, timeout=timeout, violations=violations)
                if result is Probe.DENIED or _denied(violations(), "subscribe", concrete):
                    result = Probe.DENIED
            return _check("subscribe", entry, result)

        checks = await asyncio.gather(
            *(subscribe_check(s) for s in perms.subscribe),
            *(publish_check(s) for s in perms.publish),
        )
    return list(checks)


async def _probe_queue_subscribe(
    nc: Client, subject: str, queue: str, *, timeout: float, violations: Violations
) -> Probe:
    async def on_message(msg: Msg) -> None:
        headers = msg.headers or {}
        if msg.reply and headers.get("Status") == "100":
            await nc.publish(msg.reply, b"")
        elif msg.reply:
            await nc.publish(msg.reply, PROBE_NAK)

    sub = await nc.subscribe(subject, queue=queue, cb=on_message, max_msgs=1)
    try:
        await _flush(nc, timeout)
        return Probe.DENIED if _denied(violations(), "subscribe", subject) else Probe.OK
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
