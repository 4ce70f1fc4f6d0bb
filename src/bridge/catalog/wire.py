"""The wire contract as JSON Schema: the envelope body, the headers a publish carries,
and the headers of a dead letter — built from the constants the code itself uses
(:mod:`bridge.envelope`, :mod:`bridge.routing.letter`, the consumer's
:class:`~bridge._envelope_limits.EnvelopeLimits`), so the catalog cannot drift from what
is sent and accepted.

These schemas describe; they do not validate anything at run time (the consumer's
decode, :meth:`bridge.envelope.Envelope.from_bytes`, does).  What JSON Schema cannot
say is put in descriptions: the body's size limit in bytes, the nesting depth, the
rule that a ``Nats-Msg-Id`` header equals ``event_id``.
"""

from __future__ import annotations

from typing import Any

from bridge._envelope_limits import TIMESTAMP_WIDTH, EnvelopeLimits
from bridge.config import BridgeConfig
from bridge.envelope import MSG_ID_HEADER, REQUIRED_FIELDS, TRACEPARENT_HEADER, UUID_PATTERN
from bridge.errors import Reject
from bridge.routing import letter, outcomes
from bridge.routing.letter import dead_letter_msg_id
from bridge.sync.lww import REASON_CONFLICT
from bridge.transport.publisher import EXPECTED_STREAM

__all__ = [
    "DEAD_LETTER_REASONS",
    "dead_letter_headers_schema",
    "envelope_schema",
    "publish_headers_schema",
]

#: W3C trace context ``traceparent`` (version-traceid-parentid-flags).
TRACEPARENT_PATTERN = "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"

#: The ``x-dlq-reason`` values the bridge writes itself; a handler's
#: ``Reject(reason=...)`` may add its own.
DEAD_LETTER_REASONS: tuple[str, ...] = (
    outcomes.REASON_MALFORMED,
    Reject("").reason,
    outcomes.REASON_MAX_DELIVER,
    outcomes.REASON_UNKNOWN_EVENT_TYPE,
    outcomes.REASON_UNSUPPORTED_SCHEMA_VERSION,
    outcomes.REASON_INVALID_PAYLOAD,
    outcomes.REASON_FUTURE_VERSION,
    outcomes.REASON_UNKNOWN_ORIGIN,
    REASON_CONFLICT,
)

_DIGITS = {"type": "string", "pattern": "^[0-9]+$"}


def _text(max_length: int, description: str) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": max_length, "description": description}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def envelope_schema(
    limits: EnvelopeLimits,
    *,
    schema_version: int,
    payload: dict[str, Any],
    event_type: dict[str, Any],
    resource_type: dict[str, Any],
) -> dict[str, Any]:
    """The JSON body of one event at ``schema_version`` with the given ``payload`` schema.

    ``event_type`` and ``resource_type`` are the schemas of those fields for the
    message described (a ``const``, or a string with exclusions).  Unknown fields are
    allowed: the contract permits additions.
    """
    names, ids = limits.max_name_length, limits.max_id_length
    return {
        "type": "object",
        "description": (
            f"The envelope: at most {limits.max_body_bytes} bytes of strict UTF-8 JSON "
            f"nested at most {limits.max_json_depth} deep (no NaN/Infinity, integers within "
            "64 bits, no duplicate keys); anything else is dead-lettered as malformed."
        ),
        # as the decoder reads it: an absent schema_version is 1, an absent payload {}
        "required": [*REQUIRED_FIELDS, *(["schema_version"] if schema_version > 1 else [])],
        "properties": {
            "event_id": {
                "type": "string",
                "format": "uuid",
                "pattern": f"^{UUID_PATTERN}$",
                "description": "Unique id of the event; also its Nats-Msg-Id header.",
            },
            "schema_version": {
                "type": "integer",
                "const": schema_version,
                "description": "Version of the payload's schema (absent: 1).",
            },
            "event_type": event_type,
            "producer": _text(names, "App that published the event."),
            "resource_type": resource_type,
            "resource_id": {
                "anyOf": [
                    _text(ids, "Id of the record (shared by both sides)."),
                    {"type": "integer", "description": "A numeric id: the same as its text."},
                ]
            },
            "occurred_at": {
                "type": "string",
                "format": "date-time",
                "maxLength": TIMESTAMP_WIDTH,
                "description": "When the change was made: ISO 8601 UTC with microseconds.",
            },
            "trace_id": _nullable(_text(ids, "Trace id of the change, when traced.")),
            "origin": _nullable(
                _text(names, "App where the change was first made (default: producer).")
            ),
            "causation_id": _nullable(
                _text(ids, "The event this one was caused by (e.g. a dead-letter replay).")
            ),
            "payload": payload,
        },
    }


def publish_headers_schema(config: BridgeConfig) -> dict[str, Any]:
    """The NATS headers of every event the relay publishes."""
    return {
        "type": "object",
        "required": [MSG_ID_HEADER],
        "properties": {
            MSG_ID_HEADER: {
                "type": "string",
                "pattern": f"^{UUID_PATTERN}$",
                "description": (
                    "The envelope's event_id, exactly (the server deduplicates on it within "
                    f"the duplicate window, {config.duplicate_window:g} s; a consumer "
                    "dead-letters a message whose header and event_id differ)."
                ),
            },
            TRACEPARENT_HEADER: {
                "type": "string",
                "pattern": TRACEPARENT_PATTERN,
                "description": "W3C trace context of the change, when tracing is on.",
            },
            EXPECTED_STREAM: {
                "type": "string",
                "const": config.stream_name,
                "description": "The server stores the message only in this stream.",
            },
        },
    }


def dead_letter_headers_schema(config: BridgeConfig) -> dict[str, Any]:
    """The headers of a dead letter on this app's DLQ subject (:mod:`bridge.routing.letter`).

    The original message's headers are kept, except the server's ``Nats-*`` ones.
    """
    subjects = config.subjects
    properties: dict[str, Any] = {
        MSG_ID_HEADER: {
            "type": "string",
            "examples": [dead_letter_msg_id(config.stream_name, 42)],
            "description": "dlq-<stream>-<sequence of the original>: a letter is stored once.",
        },
        letter.H_REASON: {
            "type": "string",
            "examples": list(DEAD_LETTER_REASONS),
            "description": "Why the message was dead-lettered.",
        },
        letter.H_DELIVERIES: {**_DIGITS, "description": "Deliveries of the original."},
        letter.H_ERROR_CLASS: {
            "type": "string",
            "description": "Class of the error (empty when there was none).",
        },
        letter.H_ERROR_MESSAGE: {
            "type": "string",
            "maxLength": letter.ERROR_MESSAGE_LIMIT,
            "description": "The error on one line.",
        },
        letter.H_ORIGINAL_SUBJECT: {
            "type": "string",
            "examples": [subjects.consume],
            "description": "Subject the original was delivered on (a replay republishes "
            "only to this app's own consume subject).",
        },
        letter.H_ORIGINAL_STREAM: {"type": "string", "const": config.stream_name},
        letter.H_STREAM_SEQ: {
            **_DIGITS,
            "description": "Sequence of the original in the stream (kept there until "
            "the stream's max_age).",
        },
        letter.H_ORIGINAL_MSG_ID: {
            "type": "string",
            "description": "The original's Nats-Msg-Id (its event_id), when it had one.",
        },
        letter.H_APP: {"type": "string", "const": config.app_name},
        letter.H_AT: {
            "type": "string",
            "format": "date-time",
            "description": "When it was dead-lettered (written by the app: the server's "
            "store time is what `bridge status` trusts).",
        },
        letter.H_TRUNCATED: {
            **_DIGITS,
            "description": "Present when the body was cut to fit max_payload: the "
            "original body's size in bytes.",
        },
        TRACEPARENT_HEADER: {"type": "string", "pattern": TRACEPARENT_PATTERN},
    }
    if config.dlq_retention == "never":
        properties[letter.TTL_HEADER] = {
            "type": "string",
            "const": letter.TTL_NEVER,
            "description": "Kept past the stream's max_age until replayed or purged "
            "(absent when the stream refuses per-message TTLs).",
        }
    return {
        "type": "object",
        "required": [
            MSG_ID_HEADER,
            letter.H_REASON,
            letter.H_DELIVERIES,
            letter.H_ERROR_CLASS,
            letter.H_ERROR_MESSAGE,
            letter.H_ORIGINAL_SUBJECT,
            letter.H_ORIGINAL_STREAM,
            letter.H_STREAM_SEQ,
            letter.H_APP,
            letter.H_AT,
        ],
        "properties": properties,
    }
