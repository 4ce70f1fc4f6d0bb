"""The schema versions of the events both systems publish and consume, declared once.

The payload of ``organization.*`` and ``user.*`` events is the row snapshot.

- **v1** is the row as the Ruby ``jetstream_bridge`` gem's examples publish it
  (``seed/examples-README.md``: ``id``, ``name``, ``domain``/``organization_id``,
  ``email``, ``role``, ``active``, ``created_at``, ``updated_at``) — no ``origin``
  and no ``deleted_at``, because the gem's apps have neither last-writer-wins
  versions nor tombstones.  Ids are JSON integers (a Rails app's default primary
  keys, ``"id": 42``) in 1..2**53-1 (:func:`bridge.ids.parse_id`): both sides share
  one id per record.  Unlike the HTTP API, an event's id is never a string: the
  payload is the row as a database serialises it, and the handler stores it as is.
- **v2** (current, what our services publish) adds ``origin`` (the app that made
  the change: the tie-break of last-writer-wins) and ``deleted_at`` (tombstones).

Upcaster v1 → v2: ``origin`` ← the envelope's ``origin`` (which defaults to its
``producer``), ``deleted_at`` ← ``None``; values already present are kept (our
own producers stamped v1 on full rows before versions were declared).  A v1
``*.deleted`` event therefore has no ``deleted_at``: the sync handler turns it into
a tombstone at ``occurred_at``, as for any producer that hard-deletes.  So a Rails
app still on the gem can feed a Python service.

``active`` may be missing (the handler stores ``true``), as the sync handler has
always tolerated.  Unknown fields are ignored.  The models only validate: the
handler receives the payload as sent (or as upcast), JSON-shaped.

Each version is declared with its model's JSON Schema too (:meth:`PayloadModel.json_schema`):
the event catalog (``/asyncapi.json``, docs/asyncapi/) describes the payloads from the
same models that validate them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    StrictBool,
    StringConstraints,
    ValidationInfo,
    WithJsonSchema,
)

from bridge import Envelope, EventSchemas
from bridge.envelope import parse_timestamp
from bridge.errors import EnvelopeError
from bridge.ids import MAX_ID, parse_id

CURRENT_VERSION = 2

Text = Annotated[str, StringConstraints(strict=True, min_length=1)]


def _checked_timestamp(value: str) -> str:
    try:
        parse_timestamp(value)
    except EnvelopeError as exc:  # a BridgeError; pydantic reports ValueErrors
        raise ValueError(f"{value!r} is not an ISO 8601 timestamp") from exc
    return value


#: Timestamps stay strings on the wire (the handler parses them).
Timestamp = Annotated[
    str,
    StringConstraints(strict=True),
    AfterValidator(_checked_timestamp),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


def _event_id(value: object, info: ValidationInfo) -> int:
    field = info.field_name or "id"
    if type(value) is not int:
        raise ValueError(
            f"{field}: an id in an event is a JSON integer, not a {type(value).__name__}"
        )
    return parse_id(value, field=field)


#: A record id in an event payload (module doc).
EventId = Annotated[
    int,
    BeforeValidator(_event_id),
    WithJsonSchema({"type": "integer", "minimum": 1, "maximum": MAX_ID}),
]


class _Row(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: EventId
    active: StrictBool = True
    created_at: Timestamp
    updated_at: Timestamp


class OrganizationV1(_Row):
    """An organization row as the gem publishes it."""

    name: Text
    domain: Text


class UserV1(_Row):
    """A user row as the gem publishes it."""

    organization_id: EventId
    name: Text
    email: Text
    role: Text


class _Versioned(BaseModel):
    origin: Text
    deleted_at: Timestamp | None = None


class OrganizationV2(OrganizationV1, _Versioned):
    """An organization row with its version (``origin``) and tombstone (``deleted_at``)."""


class UserV2(UserV1, _Versioned):
    """A user row with its version (``origin``) and tombstone (``deleted_at``)."""


@dataclass(frozen=True, slots=True)
class PayloadModel:
    """A pydantic model as a :data:`bridge.event_schemas.PayloadValidator`.

    Raises pydantic's ``ValidationError`` (a ``ValueError`` naming the field);
    returns the payload unchanged.
    """

    model: type[BaseModel]

    def __call__(self, payload: Mapping[str, Any]) -> Mapping[str, Any]:
        self.model.model_validate(payload)
        return payload

    def json_schema(self) -> dict[str, Any]:
        """The payload's JSON Schema, as the model validates it (fields with a default
        are optional)."""
        return self.model.model_json_schema(mode="validation")


def row_v1_to_v2(payload: Mapping[str, Any], envelope: Envelope) -> Mapping[str, Any]:
    """v1 → v2: ``origin`` from the envelope, ``deleted_at`` none (module doc)."""
    row = dict(payload)
    row.setdefault("origin", envelope.origin or envelope.producer)
    row.setdefault("deleted_at", None)
    return row


def event_schemas() -> EventSchemas:
    """A new registry with the versions of ``organization`` and ``user`` (module doc)."""
    schemas = EventSchemas()
    for resource, v1, v2 in (
        ("organization", OrganizationV1, OrganizationV2),
        ("user", UserV1, UserV2),
    ):
        for version, model in ((1, PayloadModel(v1)), (2, PayloadModel(v2))):
            schemas.version(resource, version, model, json_schema=model.json_schema())
        schemas.upcaster(resource, 1, row_v1_to_v2)
    return schemas
