"""The wire envelope: a JSON body plus NATS headers.

Body fields (docs/ARCHITECTURE.md, "The wire contract"): ``event_id`` (UUID),
``schema_version``, ``event_type`` (``<resource>.<created|updated|deleted>`` ...),
``producer``, ``resource_type``,
``resource_id``, ``occurred_at`` (ISO 8601 UTC, microseconds), ``trace_id``,
``payload``; additions: ``origin`` (the system where the change was first made)
and ``causation_id`` (the event this one was caused by, e.g. a DLQ replay).

Headers: ``Nats-Msg-Id: <event_id>`` (exactly that case, so the server
deduplicates) and ``traceparent`` when tracing is on.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from bridge._envelope_limits import (
    DEFAULT_LIMITS,
    TIMESTAMP_WIDTH,
    EnvelopeLimits,
    load_json,
    text_field,
)
from bridge.errors import EnvelopeError

SCHEMA_VERSION = 1
MSG_ID_HEADER = "Nats-Msg-Id"
TRACEPARENT_HEADER = "traceparent"
#: Body fields every envelope must have (non-empty).
REQUIRED_FIELDS = (
    "event_id", "event_type", "producer", "resource_type", "resource_id", "occurred_at"
)  # fmt: skip
#: An ``event_id``: the form PostgreSQL's uuid type and Python's uuid.UUID both read (any case).
UUID_PATTERN = r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}"
_UUID_TEXT = re.compile(UUID_PATTERN)


def utcnow() -> datetime:
    return datetime.now(UTC)


def format_timestamp(value: datetime) -> str:
    """ISO 8601 in UTC with microseconds and a ``Z`` suffix."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_timestamp(value: str) -> datetime:
    """Parse an ISO 8601 timestamp into an aware UTC datetime."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        # near year 1 or 9999 an offset moves the instant out of datetime's range
        return parsed.astimezone(UTC)
    except (TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise EnvelopeError(
            f"occurred_at: {str(value)[:80]!r} is not an ISO 8601 timestamp in range"
        ) from exc


def _optional_text(body: Mapping[str, Any], name: str, max_length: int, limit: str) -> str | None:
    value = body.get(name)
    return None if value is None else text_field(value, name, max_length, limit)


@dataclass(frozen=True, slots=True)
class Envelope:
    """One business event as it travels between systems."""

    event_type: str
    producer: str
    resource_type: str
    resource_id: str
    payload: Mapping[str, Any]
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    occurred_at: str = field(default_factory=lambda: format_timestamp(utcnow()))
    schema_version: int = SCHEMA_VERSION
    trace_id: str | None = None
    origin: str | None = None
    causation_id: str | None = None
    traceparent: str | None = None

    def __post_init__(self) -> None:
        if self.origin is None:
            object.__setattr__(self, "origin", self.producer)

    @property
    def action(self) -> str:
        """The verb after the last dot of ``event_type`` (created/updated/deleted)."""
        return self.event_type.rsplit(".", 1)[-1]

    def to_dict(self) -> dict[str, Any]:
        # Built by hand: dataclasses.asdict deep-copies the payload and is the
        # costliest step of capturing a change in the outbox.
        return {
            "event_type": self.event_type,
            "producer": self.producer,
            "resource_type": self.resource_type,
            "resource_id": self.resource_id,
            "payload": dict(self.payload),
            "event_id": self.event_id,
            "occurred_at": self.occurred_at,
            "schema_version": self.schema_version,
            "trace_id": self.trace_id,
            "origin": self.origin,
            "causation_id": self.causation_id,
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":"), default=str).encode()

    def headers(self) -> dict[str, str]:
        """NATS headers for this envelope (``Nats-Msg-Id`` is the event id)."""
        headers = {MSG_ID_HEADER: self.event_id}
        if self.traceparent:
            headers[TRACEPARENT_HEADER] = self.traceparent
        return headers

    def with_new_id(self, *, causation_id: str | None = None) -> Envelope:
        """A copy with a fresh event id, recording what caused it (DLQ replay)."""
        return replace(
            self,
            event_id=str(uuid.uuid4()),
            causation_id=causation_id if causation_id is not None else self.event_id,
        )

    @classmethod
    def from_dict(
        cls,
        body: Mapping[str, Any],
        *,
        traceparent: str | None = None,
        limits: EnvelopeLimits = DEFAULT_LIMITS,
    ) -> Envelope:
        """Validate and build an envelope; raise :class:`EnvelopeError` naming the field.

        Every string field is checked for type and length (:func:`text_field`:
        names fit the inbox's columns, ids ``limits.max_id_length``), so nothing
        here can produce a value the inbox cannot store.
        """
        if not isinstance(body, Mapping):
            raise EnvelopeError("envelope body must be a JSON object")
        missing = [name for name in REQUIRED_FIELDS if not body.get(name)]
        if missing:
            raise EnvelopeError(f"envelope is missing field(s): {', '.join(missing)}")
        event_id = body["event_id"]
        if not isinstance(event_id, str) or not _UUID_TEXT.fullmatch(event_id):
            raise EnvelopeError(
                f"event_id {str(event_id)[:80]!r} is not a UUID in its standard 8-4-4-4-12 hex form"
            )
        payload = body.get("payload", {})
        if not isinstance(payload, Mapping):
            raise EnvelopeError("payload must be a JSON object")
        version = body.get("schema_version", SCHEMA_VERSION)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise EnvelopeError(f"schema_version must be a positive integer, got {version!r}")
        names, ids = limits.max_name_length, limits.max_id_length
        columns, id_limit = "the inbox column width", "consumer.max_id_length"
        event_type = text_field(body["event_type"], "event_type", names, columns)
        producer = text_field(body["producer"], "producer", names, columns)
        resource_type = text_field(body["resource_type"], "resource_type", names, columns)
        resource_id = body["resource_id"]
        if isinstance(resource_id, int) and not isinstance(resource_id, bool):
            resource_id = str(resource_id)  # a numeric key is the same record as its text
        resource_id = text_field(resource_id, "resource_id", ids, id_limit)
        occurred_at = text_field(
            body["occurred_at"], "occurred_at", TIMESTAMP_WIDTH, "a timestamp's length"
        )
        origin = text_field(body.get("origin") or producer, "origin", names, columns)
        trace_id = _optional_text(body, "trace_id", ids, id_limit)
        causation_id = _optional_text(body, "causation_id", ids, id_limit)
        parse_timestamp(occurred_at)
        return cls(
            event_id=event_id,
            schema_version=version,
            event_type=event_type,
            producer=producer,
            resource_type=resource_type,
            resource_id=resource_id,
            occurred_at=occurred_at,
            trace_id=trace_id,
            payload=dict(payload),
            origin=origin,
            causation_id=causation_id,
            traceparent=traceparent,
        )

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        headers: Mapping[str, str] | None = None,
        *,
        limits: EnvelopeLimits = DEFAULT_LIMITS,
    ) -> Envelope:
        """Decode a message body; raise :class:`EnvelopeError` if it is malformed.

        The body is parsed within ``limits`` (:mod:`bridge._envelope_limits`: size
        first, then UTF-8, nesting depth, strict JSON, field lengths), so no body can
        make this raise anything else.  When a ``Nats-Msg-Id`` header is present it
        must equal ``event_id``.
        """
        body = load_json(data, limits)
        headers = headers or {}
        envelope = cls.from_dict(body, traceparent=headers.get(TRACEPARENT_HEADER), limits=limits)
        msg_id = headers.get(MSG_ID_HEADER)
        if msg_id is not None and msg_id != envelope.event_id:
            raise EnvelopeError(
                f"{MSG_ID_HEADER} header {msg_id[:80]!r} does not match event_id "
                f"{envelope.event_id!r}"
            )
        return envelope
