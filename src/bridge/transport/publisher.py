"""Publish envelopes to JetStream and await their PubAck.

Contract: :meth:`Publisher.publish` returns only after the server stored the
message (or recognised it as a duplicate inside the duplicate window, reported
as ``duplicate=True``).  Any failure raises :class:`~bridge.errors.PublishError`;
the caller retries with the same envelope, which is safe because the event id is
sent as ``Nats-Msg-Id``.  ``PublishError.rejected`` is set only when the message
itself was refused (a JetStream 4xx, a payload over the server's maximum);
timeouts, no responders, 5xx (e.g. no stream leader during an election, the
server's store full) and a lost connection are unavailability, not rejection —
and so are the 4xx answers in :data:`TRANSIENT_API_ERRORS`, which are about the
server's capacity, not the message: an account's JetStream storage full (a 400),
a duplicate still in process, too many requests.

A message whose headers and body together exceed the server's ``max_payload`` is
refused here, before it is sent (:class:`~bridge.errors.PayloadTooLargeError`): the
client library checks only the body, and the server answers an oversized message by
closing the connection — every publish and delivery of the process would stall on
the reconnect, and the same message would do it again.

Pipelined publishing (the relay's way, like nats-py's ``publish_async``):
:meth:`Publisher.send` writes one message and returns at once with a
:class:`PendingAck`; :meth:`Publisher.acks` then waits for a whole set of them with one
deadline (``timeout`` from the call) and returns, per message in the same order, its
:class:`PublishResult` or the :class:`~bridge.errors.PublishError` it came to — the
same classification as :meth:`Publisher.publish_raw`, plus "no PubAck within
``timeout``" for each PubAck still missing at the deadline (those are cancelled).
Every PubAck is checked; nothing is awaited per message, which is what makes it
about three times faster than one ``publish`` per message.  The PubAcks come back on
one wildcard reply subscription per publisher (:class:`_AckInbox`), not through
nats-py's ``publish_async``: its reply handler raises a JetStream error (e.g. a
message over the stream's size limit) inside the subscription callback instead of
setting it on the future, so a rejection would look like a missing PubAck.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import MaxPayloadError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import Header
from nats.js.errors import APIError

from bridge.envelope import Envelope
from bridge.errors import PayloadTooLargeError, PublishError

EXPECTED_STREAM = Header.EXPECTED_STREAM.value
_NO_RESPONDERS = "503"

#: JetStream errors (``err_code``, nats-server's errors.json) answered with a 4xx that do
#: not refuse the message: the same message is stored once the condition passes.
TRANSIENT_API_ERRORS: dict[int, str] = {
    10002: "JetStream storage of the account is full (resource limits exceeded)",
    10158: "a publish with this Nats-Msg-Id is still in process",
    10167: "too many requests",
}


@dataclass(frozen=True, slots=True)
class PublishResult:
    """What the server answered: where the message is, and whether it was a duplicate."""

    stream: str
    seq: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """A ready-to-send message (subject, body, headers) — e.g. a claimed outbox row."""

    subject: str
    data: bytes
    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class PendingAck:
    """A message :meth:`Publisher.send` wrote, and the future of its PubAck."""

    message: OutgoingMessage
    future: asyncio.Future[Any]


class _AckInbox:
    """The reply subscription of :meth:`Publisher.send`: PubAcks by reply token."""

    def __init__(self, client: Client) -> None:
        self.prefix = client.new_inbox() + "."
        self._futures: dict[str, asyncio.Future[PublishResult]] = {}
        self._tokens = itertools.count()
        self.client = client

    async def start(self) -> None:
        await self.client.subscribe(self.prefix + "*", cb=self._on_reply)

    def expect(self) -> tuple[str, asyncio.Future[PublishResult]]:
        """A fresh reply subject and the future its answer resolves."""
        token = str(next(self._tokens))
        future: asyncio.Future[PublishResult] = asyncio.get_running_loop().create_future()
        self._futures[token] = future
        # However the future ends (answer, timeout, cancel) its token goes:
        # dict.pop(token, future) never raises.
        future.add_done_callback(functools.partial(self._futures.pop, token))
        return self.prefix + token, future

    async def _on_reply(self, msg: Msg) -> None:
        future = self._futures.get(msg.subject[len(self.prefix) :])
        if future is None or future.done():
            return  # late: timed out or cancelled already
        if msg.headers and msg.headers.get(Header.STATUS.value) == _NO_RESPONDERS:
            future.set_exception(NoRespondersError())
            return
        try:
            answer = json.loads(msg.data)
            error = answer.get("error")
            if error is not None:
                future.set_exception(
                    APIError(
                        code=error.get("code"),
                        err_code=error.get("err_code"),
                        description=error.get("description"),
                    )
                )
            else:
                # the three fields a PubAck is read for (nats-py's PubAck.from_response
                # builds a dataclass through fields() per message: a visible cost here)
                future.set_result(
                    PublishResult(
                        stream=answer["stream"],
                        seq=int(answer["seq"]),
                        duplicate=bool(answer.get("duplicate")),
                    )
                )
        except Exception as exc:  # a reply we cannot read: that publish failed
            future.set_exception(exc)


def headers_size(headers: Mapping[str, str]) -> int:
    """Bytes the headers take in an HPUB (``NATS/1.0`` line, ``key: value`` lines, end)."""
    return 12 + sum(len(k.encode()) + len(v.encode()) + 4 for k, v in headers.items())


def message_size(message: OutgoingMessage) -> int:
    """What the server counts against ``max_payload``: headers plus body."""
    return headers_size(message.headers) + len(message.data)


async def _all_done(futures: Sequence[asyncio.Future[Any]], timeout: float) -> None:
    """Wait until every future is done or ``timeout`` passed.

    The server answers one connection's publishes in order, so once the last PubAck
    missing is in, the others are too: waiting on that one first spares a done-callback
    per future (``asyncio.wait`` on a thousand futures was a visible cost per event);
    whatever is still missing after it — answers out of order — is waited for together.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    missing = [future for future in futures if not future.done()]
    if missing:
        await asyncio.wait(missing[-1:], timeout=timeout)
        missing = [future for future in missing if not future.done()]
    if missing and (remaining := deadline - loop.time()) > 0:
        await asyncio.wait(missing, timeout=remaining)


class Publisher:
    """Thin, typed wrapper over ``js.publish`` that maps errors to :class:`PublishError`."""

    def __init__(self, js: JetStreamContext, *, stream: str | None, timeout: float = 5.0) -> None:
        self._js = js
        self._stream = stream
        self._timeout = timeout
        self._inbox: _AckInbox | None = None
        self._inbox_lock = asyncio.Lock()

    async def publish(self, subject: str, envelope: Envelope) -> PublishResult:
        """Publish one envelope with ``Nats-Msg-Id = event_id``; await the PubAck."""
        return await self.publish_raw(
            OutgoingMessage(subject, envelope.to_bytes(), envelope.headers())
        )

    @property
    def max_payload(self) -> int | None:
        """The most a message may take on the wire, headers included (the server's
        ``max_payload``, as the connection learnt it); ``None`` if unknown."""
        # nats-py keeps the client on the context privately; INFO's max_payload is public.
        limit = getattr(self._client(), "max_payload", None)
        return int(limit) if isinstance(limit, int) else None

    def _client(self) -> Client | None:
        # nats-py keeps the client on the context privately.
        client = getattr(self._js, "_nc", None)
        return client if isinstance(client, Client) else None

    async def _replies(self) -> _AckInbox:
        if self._inbox is None:
            async with self._inbox_lock:
                if self._inbox is None:
                    client = self._client()
                    if client is None:
                        raise PublishError("publisher has no NATS connection to send on")
                    inbox = _AckInbox(client)
                    await inbox.start()
                    self._inbox = inbox
        return self._inbox

    def _check_size(self, message: OutgoingMessage, headers: Mapping[str, str]) -> None:
        """Refuse a message over the server's ``max_payload`` before it is sent;
        ``headers`` are the ones sent (``Nats-Expected-Stream`` included)."""
        limit = self.max_payload
        if limit is None:
            return
        # Cheap bound first (a character is at most 4 bytes in UTF-8): the exact count
        # encodes every header, a visible cost per message on the relay's hot path.
        characters = 0
        for key, value in headers.items():
            characters += len(key) + len(value) + 1
        if 12 + len(message.data) + 4 * characters <= limit:
            return
        size = headers_size(headers) + len(message.data)
        if size > limit:
            raise PayloadTooLargeError(
                f"publish to {message.subject!r}: {size} bytes with headers exceed the "
                f"server's max_payload of {limit}",
                size=size,
                limit=limit,
            )

    async def publish_raw(self, message: OutgoingMessage) -> PublishResult:
        """Publish pre-encoded bytes and headers; await the PubAck."""
        headers = dict(message.headers)
        if self._stream is not None:  # nats-py adds Nats-Expected-Stream for us
            self._check_size(message, {**headers, EXPECTED_STREAM: self._stream})
        else:
            self._check_size(message, headers)
        try:
            ack = await self._js.publish(
                message.subject,
                message.data,
                timeout=self._timeout,
                stream=self._stream,
                headers=headers,
            )
        except Exception as exc:
            raise self._error(message, exc) from exc
        return PublishResult(stream=ack.stream, seq=ack.seq, duplicate=bool(ack.duplicate))

    async def send(self, message: OutgoingMessage) -> PendingAck:
        """Write one message without waiting for its PubAck (module doc); raises
        :class:`PublishError` if it could not be written (too large, connection closed)."""
        headers = dict(message.headers)
        if self._stream is not None:
            headers[EXPECTED_STREAM] = self._stream
        self._check_size(message, headers)
        try:
            replies = await self._replies()
            reply, future = replies.expect()
            try:
                await replies.client.publish(
                    message.subject, message.data, reply=reply, headers=headers
                )
            except BaseException:
                future.cancel()
                raise
        except PublishError:
            raise
        except Exception as exc:
            raise self._error(message, exc) from exc
        return PendingAck(message, future)

    async def acks(self, pending: Sequence[PendingAck]) -> list[PublishResult | PublishError]:
        """Wait up to ``timeout`` for the PubAcks of ``pending``; per message, in order,
        its result or its error (module doc).  Cancelled: the PubAcks still missing are
        cancelled too (their slots in the client's window are freed)."""
        futures = [p.future for p in pending]
        try:
            await _all_done(futures, self._timeout)
        finally:
            for future in futures:
                if not future.done():
                    future.cancel()
        results: list[PublishResult | PublishError] = []
        for item in pending:
            future = item.future
            if future.cancelled():
                results.append(self._error(item.message, TimeoutError()))
            elif (exc := future.exception()) is not None:
                results.append(self._error(item.message, exc))
            else:
                results.append(future.result())
        return results

    def _error(self, message: OutgoingMessage, exc: BaseException) -> PublishError:
        """What a failed publish of ``message`` means (module doc: rejected or not)."""
        subject = message.subject
        if isinstance(exc, PublishError):
            return exc
        if isinstance(exc, NoRespondersError):
            return PublishError(f"no stream listens on {subject!r} (is the stream provisioned?)")
        if isinstance(exc, TimeoutError | NatsTimeoutError):
            return PublishError(f"no PubAck for {subject!r} within {self._timeout}s")
        if isinstance(exc, APIError):
            # A 4xx is about this message — unless it is one of the capacity answers
            # that pass by themselves; 503 (no leader, store full) and 500 pass too.
            transient = TRANSIENT_API_ERRORS.get(exc.err_code or 0)
            if transient is None and exc.code is not None and 400 <= exc.code < 500:
                return PublishError(
                    f"JetStream rejected publish to {subject!r}: {exc}", rejected=True
                )
            return PublishError(
                f"JetStream could not take a publish to {subject!r} now (retried): "
                + (f"{transient}; {exc}" if transient else str(exc))
            )
        if isinstance(exc, MaxPayloadError):
            return PublishError(
                f"publish to {subject!r}: {len(message.data)} bytes exceed the "
                "server's max_payload",
                rejected=True,
            )
        # connection closed/draining, etc.
        return PublishError(f"publish to {subject!r} failed: {exc!r}")
