"""Probes that learn the server's verdict on one publish or subscribe, deterministically.

Each probe sends one operation the app needs, in a form that changes nothing on
the server (see :mod:`bridge.provisioning.access` for what each one proves), and then calls
:func:`server_verdict`, which returns only once the server has handled that
operation.  A denied operation is then already in the violations list — so a
probe never reports "allowed" because the server's answer was late.

Why that holds (checked against nats-server 2.15's ``client.go`` and nats-py
2.16's client and parser):

- The server reads one connection's protocol in order.  A PUB or SUB it refuses
  gets ``-ERR 'Permissions Violation ...'`` (``pubPermissionViolation`` /
  ``subPermissionViolation`` → ``sendErr``) queued on that connection's outbound
  buffer while the command is processed, i.e. before the ``PONG`` it queues for a
  later ``PING`` (``processPing`` → ``sendPong``, same buffer).
- nats-py parses the replies in order and awaits ``_process_err`` — which awaits
  the connection's error callback — before it handles the next line, so the
  violation is recorded before the ``PONG`` resolves ``flush()``.
- But nats-py writes a ``flush()``'s ``PING`` straight to the socket, while
  ``publish``/``subscribe`` commands wait in its pending buffer for the flusher
  task: a ``PING`` sent right after a ``PUB`` can overtake it, and its ``PONG`` then
  arrives *before* the ``-ERR`` (measured: the doctor reported denied subjects as
  allowed).  :func:`server_verdict` therefore first waits until the pending
  buffer is empty (the flusher has written every command queued so far), and
  only then sends the ``PING`` whose ``PONG`` it waits for.

Request-style probes (a JetStream publish, a pull request) use their own reply
subscription instead of ``nc.request``, so the request is queued before the
round trip starts.  A round trip that does not complete within the timeout gives
:attr:`Probe.NO_ANSWER` — unknown is never reported as allowed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError

from bridge._support.durations import to_nanos
from bridge.config import BridgeConfig
from bridge.provisioning.permissions import msg_next_subject
from bridge.transport.connection import parse_violation

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
NO_RESPONDERS_STATUS = "503"

Violations = Callable[[], Sequence[str]]


class Probe(StrEnum):
    """What one probe learned."""

    OK = "ok"
    NO_RESPONDERS = "no_responders"
    WRONG_STREAM = "wrong_stream"
    PUSH_BASED = "push_based"
    DENIED = "denied"
    INBOX_DENIED = "inbox_denied"
    NO_ANSWER = "no_answer"


def denied(violations: Sequence[str], operation: str, subject: str) -> bool:
    """Whether one of ``violations`` refused ``operation`` on exactly ``subject``."""
    # nats-py lower-cases the server's error text, so subjects compare case-insensitively.
    wanted = subject.lower()
    for text in violations:
        parsed = parse_violation(text)
        if parsed is not None and parsed[0] == operation and parsed[1].lower() == wanted:
            return True
    return False


def denied_prefix(violations: Sequence[str], operation: str, prefix: str) -> bool:
    """Whether one of ``violations`` refused ``operation`` on a subject under ``prefix``."""
    wanted = prefix.lower()
    for text in violations:
        parsed = parse_violation(text)
        if parsed is not None and parsed[0] == operation and parsed[1].lower().startswith(wanted):
            return True
    return False


async def server_verdict(nc: Client, timeout: float) -> bool:
    """Return True once the server has handled every command queued on ``nc`` so far.

    False when that could not be confirmed within ``timeout`` (the verdict is then
    unknown).  See the module doc for why the pending buffer is emptied first.
    """
    deadline = time.monotonic() + timeout
    try:
        while nc.pending_data_size > 0:  # our command has not reached the socket yet
            await nc.flush(timeout=_flush_timeout(deadline))  # kicks nats-py's flusher
        await nc.flush(timeout=_flush_timeout(deadline))  # this PING follows our command
    except Exception as exc:  # a timeout or a closed connection: the verdict is unknown
        log.warning("no round trip to the server", extra={"error": repr(exc)})
        return False
    return True


def _flush_timeout(deadline: float) -> int:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("round trip deadline passed")
    return max(1, math.ceil(remaining))  # nats-py takes whole seconds


async def _request_probe(
    nc: Client,
    subject: str,
    *,
    payload: bytes,
    headers: dict[str, str] | None,
    timeout: float,
    violations: Violations,
) -> tuple[Probe, Msg | None]:
    """Publish a request with its own reply subscription; the verdict, then the answer."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, max_msgs=1)
    try:
        await nc.publish(subject, payload, reply=inbox, headers=headers)
        known = await server_verdict(nc, timeout)
        if denied(violations(), "publish", subject):
            return Probe.DENIED, None
        if denied(violations(), "subscribe", inbox):
            return Probe.INBOX_DENIED, None
        if not known:
            return Probe.NO_ANSWER, None
        try:
            msg = await sub.next_msg(timeout=timeout)
        except (TimeoutError, NatsTimeoutError):
            return Probe.NO_ANSWER, None
        if (msg.headers or {}).get("Status") == NO_RESPONDERS_STATUS and not msg.data:
            return Probe.NO_RESPONDERS, None
        return Probe.OK, msg
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


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


async def _give_back(nc: Client, msg: Msg) -> None:
    """Answer a flow-control request, or hand a JetStream delivery back (NAK, 1 s).

    Anything else (e.g. a peer's reconciliation request that reached a probe in the
    responder's queue group) is left unanswered: the requester retries.
    """
    headers = msg.headers or {}
    if msg.reply and headers.get("Status") == "100":
        await nc.publish(msg.reply, b"")
    elif msg.reply and msg.reply.startswith("$JS.ACK."):
        await nc.publish(msg.reply, PROBE_NAK)


async def probe_push_consumer(
    nc: Client, config: BridgeConfig, *, wait: float, violations: Violations
) -> Probe:
    """Join the deliver group and wait for a heartbeat, flow-control request or delivery."""
    alive = asyncio.Event()

    async def on_message(msg: Msg) -> None:
        await _give_back(nc, msg)
        alive.set()

    # max_msgs=1: the server drops the probe from the group as it hands over the
    # first message, so a NAKed delivery is redelivered to a real member and can
    # never come back to a probe that is about to leave (it would sit out ack_wait).
    sub = await nc.subscribe(
        config.deliver_subject, queue=config.deliver_group, cb=on_message, max_msgs=1
    )
    try:
        known = await server_verdict(nc, min(wait, 5.0))
        if denied(violations(), "subscribe", config.deliver_subject):
            return Probe.DENIED
        if not known:
            return Probe.NO_ANSWER
        try:
            await asyncio.wait_for(alive.wait(), wait)
        except TimeoutError:
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
    known = await server_verdict(nc, timeout)
    if denied(violations(), "publish", subject):
        return Probe.DENIED
    return Probe.OK if known else Probe.NO_ANSWER


async def probe_subscribe(
    nc: Client, subject: str, *, timeout: float, violations: Violations, queue: str = ""
) -> Probe:
    """Subscribe (in ``queue`` if given) and leave again; a delivery is handed back."""

    async def on_message(msg: Msg) -> None:
        await _give_back(nc, msg)

    sub = await nc.subscribe(subject, queue=queue, cb=on_message, max_msgs=1)
    try:
        known = await server_verdict(nc, timeout)
        if denied(violations(), "subscribe", subject):
            return Probe.DENIED
        return Probe.OK if known else Probe.NO_ANSWER
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


def probe_subject(pattern: str) -> str:
    """A concrete subject under ``<prefix>.>`` that the server does not act on."""
    return pattern[: -len(">")] + "probe" if pattern.endswith(">") else pattern
