"""Dead letters: store, list, show, replay and purge; catch what the server gives up on.

A dead letter is the original message (body and headers, unchanged) published on
this app's DLQ subject (``{app}.sync.dlq``, in the same stream) with ``x-dlq-*``
headers saying why; what is stored, and how long it is kept
(``dlq_retention``: by default until handled, whatever the stream's ``max_age``),
is described in :mod:`bridge.routing.letter`.

Reading dead letters needs no durable consumer: :meth:`DeadLetters.list` and
:meth:`DeadLetters.show` use JetStream direct get (``next_by_subj`` over the DLQ
subject).  That is an admin operation: apps in restrictive mode may publish
dead letters but usually may not read them.  :meth:`DeadLetters.replay` follows
the rules of :mod:`bridge.routing.replay`: only to this app's consume subject, under a
deterministic id, and a replayed letter is removed from the DLQ.

A message whose last attempt never finished (process killed mid-handler) is
settled by the consumer itself (the reserved delivery,
:func:`bridge.routing.outcomes.decide_exhausted`); :meth:`DeadLetters.read` reads back
one the server gave up on (:mod:`bridge.consumer.max_deliveries`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from bridge.config import BridgeConfig
from bridge.envelope import MSG_ID_HEADER, format_timestamp, utcnow
from bridge.errors import (
    DeadLetterError,
    DeadLetterNotFoundError,
    PayloadTooLargeError,
    PublishError,
)
from bridge.routing.letter import (
    H_APP,
    H_AT,
    H_DELIVERIES,
    H_ERROR_CLASS,
    H_ERROR_MESSAGE,
    H_ORIGINAL_MSG_ID,
    H_ORIGINAL_STREAM,
    H_ORIGINAL_SUBJECT,
    H_REASON,
    H_STREAM_SEQ,
    H_TRUNCATED,
    SERVER_HEADERS,
    TTL_HEADER,
    DeadLetter,
    dead_letter_msg_id,
    header_safe,
    retention_headers,
    ttl_refused,
)
from bridge.routing.replay import Replayed, replay_envelope
from bridge.transport.delivery import Received, StoredMessage
from bridge.transport.publisher import OutgoingMessage, Publisher, PublishResult, headers_size

log = logging.getLogger("bridge.dlq")


class DeadLetters:
    """This app's dead-letter queue (see module doc)."""

    def __init__(self, config: BridgeConfig, js: JetStreamContext, publisher: Publisher) -> None:
        self._config = config
        self._js = js
        self._publisher = publisher
        self.subject = config.subjects.dlq

    async def publish(
        self,
        delivery: Received,
        *,
        reason: str,
        error: BaseException | None,
        event_id: str | None = None,
    ) -> None:
        """Store ``delivery`` as a dead letter; return once the server has it.

        Raises :class:`~bridge.errors.DeadLetterError` if the publish fails; the
        caller must then leave the original un-acked (NAK) so nothing is lost.
        Logged at ERROR with ``event_id`` (when the caller knows it), subject,
        deliveries, reason, the error and, for a raised error, its traceback.
        """
        headers = {k: v for k, v in (delivery.headers or {}).items() if not k.startswith("Nats-")}
        original_id = (delivery.headers or {}).get(MSG_ID_HEADER)
        if original_id:
            headers[H_ORIGINAL_MSG_ID] = original_id
        headers.update(
            {
                MSG_ID_HEADER: dead_letter_msg_id(delivery.stream, delivery.stream_seq),
                H_REASON: reason,
                H_DELIVERIES: str(delivery.num_delivered),
                H_ERROR_CLASS: type(error).__name__ if error is not None else "",
                H_ERROR_MESSAGE: header_safe(str(error)) if error is not None else "",
                H_ORIGINAL_SUBJECT: delivery.subject,
                H_ORIGINAL_STREAM: delivery.stream,
                H_STREAM_SEQ: str(delivery.stream_seq),
                H_APP: self._config.app_name,
                H_AT: format_timestamp(utcnow()),
                **retention_headers(self._config),
            }
        )
        try:
            try:
                result = await self._publish_fitting(delivery, headers)
            except PublishError as exc:
                if TTL_HEADER not in headers or not ttl_refused(exc):
                    raise
                # Stored without the TTL the letter ages out with the stream, but a
                # stream not yet re-provisioned must not stop dead-lettering.
                log.error(
                    "stream refuses Nats-TTL (no allow_msg_ttl): dead letter stored with "
                    "the stream's max_age, it is not kept until handled",
                    extra={
                        "stream": self._config.stream_name,
                        "stream_seq": delivery.stream_seq,
                        "hint": "run `bridge-provision apply` (or start an app with "
                        "auto_provision) to enable allow_msg_ttl on the stream",
                    },
                )
                del headers[TTL_HEADER]
                result = await self._publish_fitting(delivery, headers)
        except PublishError as exc:
            raise DeadLetterError(
                f"dead letter for {delivery.stream}#{delivery.stream_seq} not stored: {exc}"
            ) from exc
        log.error(
            "dead-lettered",
            extra={
                "event_id": event_id,
                "reason": reason,
                "subject": delivery.subject,
                "stream_seq": delivery.stream_seq,
                "deliveries": delivery.num_delivered,
                "error_type": headers[H_ERROR_CLASS] or None,
                "error": str(error) if error is not None else None,
                "dlq_seq": result.seq,
                "duplicate": result.duplicate,
            },
            exc_info=error if error is not None and error.__traceback__ is not None else None,
        )

    async def letters(
        self, *, start_seq: int = 1, until_seq: int | None = None
    ) -> AsyncIterator[DeadLetter]:
        """Dead letters one at a time, oldest first, from ``start_seq`` to ``until_seq``."""
        cursor = max(start_seq, 1)
        while until_seq is None or cursor <= until_seq:
            try:
                raw = await self._js.get_msg(
                    self._config.stream_name,
                    seq=cursor,
                    subject=self.subject,
                    next=True,
                    direct=True,
                )
            except NotFoundError:
                return
            seq = int(raw.seq or cursor)
            if until_seq is not None and seq > until_seq:
                return
            yield DeadLetter.from_stored(seq, raw.data or b"", raw.headers or {})
            cursor = seq + 1

    async def _publish_fitting(self, delivery: Received, headers: dict[str, str]) -> PublishResult:
        """Publish the letter; a body that does not fit ``max_payload`` beside the
        ``x-dlq-*`` headers is cut to fit and marked :data:`H_TRUNCATED` (the original
        stays in the stream at ``x-dlq-stream-seq`` until ``max_age``): a delivery near
        the limit is still dead-lettered, not NAKed for ever."""
        try:
            return await self._publisher.publish_raw(
                OutgoingMessage(self.subject, delivery.data, headers)
            )
        except PayloadTooLargeError as exc:
            cut = {**headers, H_TRUNCATED: str(len(delivery.data))}
            # exc.size counts every header the publish adds; the marker adds its own
            overhead = exc.size - len(delivery.data) + headers_size(cut) - headers_size(headers)
            room = max(exc.limit - overhead, 0)
            log.warning(
                "dead letter body cut to fit max_payload",
                extra={
                    "stream_seq": delivery.stream_seq,
                    "subject": delivery.subject,
                    "body_bytes": len(delivery.data),
                    "kept_bytes": room,
                    "max_payload": exc.limit,
                },
            )
            return await self._publisher.publish_raw(
                OutgoingMessage(self.subject, delivery.data[:room], cut)
            )

    async def list(self, limit: int = 100, *, start_seq: int = 1) -> list[DeadLetter]:
        """Up to ``limit`` dead letters, oldest first, from stream sequence ``start_seq``."""
        letters: list[DeadLetter] = []
        if limit <= 0:
            return letters
        async for letter in self.letters(start_seq=start_seq):
            letters.append(letter)
            if len(letters) >= limit:
                break
        return letters

    async def show(self, seq: int) -> DeadLetter:
        """The dead letter at stream sequence ``seq``; DeadLetterNotFoundError if none."""
        try:
            raw = await self._js.get_msg(self._config.stream_name, seq=seq, direct=True)
        except NotFoundError as exc:
            raise DeadLetterNotFoundError(
                f"no dead letter at sequence {seq} (replayed, purged, or never stored)"
            ) from exc
        if raw.subject != self.subject:
            raise DeadLetterNotFoundError(
                f"sequence {seq} is on {raw.subject!r}, not the DLQ subject {self.subject!r}"
            )
        return DeadLetter.from_stored(seq, raw.data or b"", raw.headers or {})

    async def replay(self, seq: int) -> Replayed:
        """Replay dead letter ``seq`` (:mod:`bridge.routing.replay`); see :meth:`replay_letter`.

        Raises DeadLetterNotFoundError when no letter is stored at ``seq`` (e.g. it
        was replayed already).
        """
        return await self.replay_letter(await self.show(seq))

    async def replay_letter(self, letter: DeadLetter) -> Replayed:
        """Publish ``letter``'s envelope to this app's consume subject under its replay
        id, then remove the letter.  Raises ReplayRefusedError (nothing published) for
        a malformed or foreign letter, PublishError when the publish fails."""
        envelope = replay_envelope(letter, self._config)
        result = await self._publisher.publish(self._config.subjects.consume, envelope)
        handled = await self._mark_handled(letter)
        log.info(
            "dead letter replayed",
            extra={
                "dlq_seq": letter.seq,
                "subject": self._config.subjects.consume,
                "event_id": envelope.event_id,
                "causation_id": envelope.causation_id,
                "stream_seq": result.seq,
                "duplicate": result.duplicate,
                "handled": handled,
            },
        )
        return Replayed(
            dlq_seq=letter.seq,
            event_id=envelope.event_id,
            causation_id=envelope.causation_id or "",
            stream_seq=result.seq,
            duplicate=result.duplicate,
            handled=handled,
        )

    async def _mark_handled(self, letter: DeadLetter) -> bool:
        """Remove a replayed letter from the stream (gone already counts as done).

        Returns False when the server refused (e.g. ``deny_delete`` on the stream): the
        letter stays listed, and replaying it again is a duplicate.
        """
        try:
            await self._js.delete_msg(self._config.stream_name, letter.seq)
            return True
        except (NatsError, TimeoutError) as exc:
            error = exc
        # The server answers "no message found" or "stream store EOF" for a letter
        # deleted meanwhile (two replays of one letter): look, rather than parse.
        with contextlib.suppress(NatsError, TimeoutError):
            try:
                await self.show(letter.seq)
            except DeadLetterNotFoundError:
                return True
        log.error(
            "replayed dead letter could not be removed from the DLQ",
            extra={
                "dlq_seq": letter.seq,
                "error": repr(error),
                "hint": "replaying it again is a duplicate; remove it with "
                f"`bridge dlq purge {letter.seq}`",
            },
        )
        return False

    async def purge(self, seq: int | None = None) -> int:
        """Delete dead letter ``seq`` (checked to be on the DLQ subject), or all; return count."""
        stream = self._config.stream_name
        if seq is not None:
            await self.show(seq)
            await self._js.delete_msg(stream, seq)
            return 1
        count = await self.count()
        await self._js.purge_stream(stream, subject=self.subject)
        return count

    async def count(self) -> int:
        """How many dead letters are stored (admin permission needed)."""
        info = await self._js.stream_info(self._config.stream_name, subjects_filter=self.subject)
        return int((info.state.subjects or {}).get(self.subject, 0))

    async def last_seq(self) -> int:
        """The stream's last sequence now (a bound for "every letter stored so far")."""
        info = await self._js.stream_info(self._config.stream_name)
        return int(info.state.last_seq or 0)

    async def read(self, stream: str, seq: int, *, deliveries: int = 0) -> StoredMessage:
        """Read message ``seq`` of ``stream`` back (direct get), e.g. one the server abandoned."""
        try:
            raw = await self._js.get_msg(stream, seq=seq, direct=True)
        except NotFoundError as exc:
            raise DeadLetterNotFoundError(f"{stream}#{seq} is no longer stored") from exc
        except (NatsError, TimeoutError) as exc:
            raise DeadLetterError(f"cannot read {stream}#{seq}: {exc!r}") from exc
        return StoredMessage(
            data=raw.data or b"",
            headers={k: v for k, v in (raw.headers or {}).items() if k not in SERVER_HEADERS},
            subject=raw.subject or "",
            stream=stream,
            stream_seq=seq,
            num_delivered=deliveries,
        )
