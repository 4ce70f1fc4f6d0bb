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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from nats.errors import MaxPayloadError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import Header
from nats.js.errors import APIError

from bridge.envelope import Envelope
from bridge.errors import PayloadTooLargeError, PublishError

EXPECTED_STREAM = Header.EXPECTED_STREAM.value

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


def headers_size(headers: Mapping[str, str]) -> int:
    """Bytes the headers take in an HPUB (``NATS/1.0`` line, ``key: value`` lines, end)."""
    return 12 + sum(len(k.encode()) + len(v.encode()) + 4 for k, v in headers.items())


def message_size(message: OutgoingMessage) -> int:
    """What the server counts against ``max_payload``: headers plus body."""
    return headers_size(message.headers) + len(message.data)


class Publisher:
    """Thin, typed wrapper over ``js.publish`` that maps errors to :class:`PublishError`."""

    def __init__(self, js: JetStreamContext, *, stream: str | None, timeout: float = 5.0) -> None:
        self._js = js
        self._stream = stream
        self._timeout = timeout

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
        client = getattr(self._js, "_nc", None)
        limit = getattr(client, "max_payload", None)
        return int(limit) if isinstance(limit, int) else None

    async def publish_raw(self, message: OutgoingMessage) -> PublishResult:
        """Publish pre-encoded bytes and headers; await the PubAck."""
        size = message_size(message)
        if self._stream is not None:  # nats-py adds Nats-Expected-Stream for us
            size += headers_size({EXPECTED_STREAM: self._stream}) - headers_size({})
        limit = self.max_payload
        if limit is not None and size > limit:
            raise PayloadTooLargeError(
                f"publish to {message.subject!r}: {size} bytes with headers exceed the "
                f"server's max_payload of {limit}",
                size=size,
                limit=limit,
            )
        try:
            ack = await self._js.publish(
                message.subject,
                message.data,
                timeout=self._timeout,
                stream=self._stream,
                headers=dict(message.headers),
            )
        except NoRespondersError as exc:
            raise PublishError(
                f"no stream listens on {message.subject!r} (is the stream provisioned?)"
            ) from exc
        except (TimeoutError, NatsTimeoutError) as exc:
            raise PublishError(
                f"no PubAck for {message.subject!r} within {self._timeout}s"
            ) from exc
        except APIError as exc:
            # A 4xx is about this message — unless it is one of the capacity answers
            # that pass by themselves; 503 (no leader, store full) and 500 pass too.
            transient = TRANSIENT_API_ERRORS.get(exc.err_code or 0)
            if transient is None and exc.code is not None and 400 <= exc.code < 500:
                raise PublishError(
                    f"JetStream rejected publish to {message.subject!r}: {exc}", rejected=True
                ) from exc
            raise PublishError(
                f"JetStream could not take a publish to {message.subject!r} now (retried): "
                + (f"{transient}; {exc}" if transient else str(exc))
            ) from exc
        except MaxPayloadError as exc:
            raise PublishError(
                f"publish to {message.subject!r}: {len(message.data)} bytes exceed the "
                "server's max_payload",
                rejected=True,
            ) from exc
        except Exception as exc:  # connection closed/draining, etc.
            raise PublishError(f"publish to {message.subject!r} failed: {exc!r}") from exc
        return PublishResult(stream=ack.stream, seq=ack.seq, duplicate=bool(ack.duplicate))
