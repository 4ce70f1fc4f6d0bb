"""Reading the Ruby gem's events with integer ids through the library alone: the
envelope takes a numeric ``resource_id``, a payload validator built on
``bridge.ids.parse_id`` takes integer ``id`` / ``organization_id`` (or their text) and
refuses what is not an id, and a v1 → v2 upcaster fills ``origin`` the way the
example services' does."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

import pytest

from bridge import Envelope, EventSchemas, Reject
from bridge.errors import EnvelopeError
from bridge.ids import MAX_ID, parse_id

ID_FIELDS = ("id", "organization_id")


def _v1(payload: Mapping[str, Any]) -> Mapping[str, Any]:
    # Ids normalised to int; the other fields as the gem sends them.
    row = dict(payload)
    for name in ID_FIELDS:
        if name in row or name == "id":
            row[name] = parse_id(row[name], field=name)
    return row


def _v2(payload: Mapping[str, Any]) -> Mapping[str, Any]:
    if not isinstance(payload.get("origin"), str):
        raise ValueError("origin: a text is required")
    return _v1(payload)


def _upcast(payload: Mapping[str, Any], envelope: Envelope) -> Mapping[str, Any]:
    return {**payload, "origin": payload.get("origin", envelope.origin), "deleted_at": None}


def _schemas() -> EventSchemas:
    schemas = EventSchemas()
    schemas.version("user", 1, _v1)
    schemas.version("user", 2, _v2)
    schemas.upcaster("user", 1, _upcast)
    return schemas


def _gem_body(**payload: Any) -> dict[str, Any]:
    """A user event as a Rails app on the gem publishes it: integer ids, no origin."""
    row = {
        "id": 42,
        "organization_id": 7,
        "name": "Ada",
        "email": "ada@example.com",
        "role": "admin",
        "active": True,
        "created_at": "2026-12-01T10:00:00.000000Z",
        "updated_at": "2026-12-01T10:00:00.000000Z",
        **payload,
    }
    return {
        "event_id": str(uuid.uuid4()),
        "schema_version": 1,
        "event_type": "user.created",
        "producer": "system_a",
        "resource_type": "user",
        "resource_id": row["id"],
        "occurred_at": "2026-12-01T10:00:00.000000Z",
        "payload": row,
    }


def test_a_gem_event_with_integer_ids_reads_as_the_current_version() -> None:
    envelope = Envelope.from_bytes(json.dumps(_gem_body()).encode())
    assert envelope.resource_id == "42"  # one record, whether its key came as 42 or "42"
    resolved = _schemas().resolve(envelope)
    assert resolved.schema_version == 2
    assert resolved.payload["id"] == 42 and resolved.payload["organization_id"] == 7
    assert resolved.payload["origin"] == "system_a"  # no origin: the producer's name


def test_numeric_text_ids_are_the_same_ids() -> None:
    body = _gem_body(id="42", organization_id=str(MAX_ID))
    resolved = _schemas().resolve(Envelope.from_dict(body))
    assert (resolved.payload["id"], resolved.payload["organization_id"]) == (42, MAX_ID)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", MAX_ID + 1),
        ("id", 0),
        ("id", -3),
        ("id", True),
        ("id", 42.0),
        ("id", "42abc"),
        ("id", str(uuid.uuid4())),  # a UUID-era id is not an integer id
        ("organization_id", None),
        ("organization_id", " 7"),
    ],
)
def test_a_payload_id_that_is_not_an_id_is_dead_lettered_naming_the_field(
    field: str, value: object
) -> None:
    body = _gem_body(**{field: value})
    body["resource_id"] = "42"
    with pytest.raises(Reject) as rejected:
        _schemas().resolve(Envelope.from_dict(body))
    assert rejected.value.reason == "invalid_payload"
    assert f"{field}: " in str(rejected.value)


@pytest.mark.parametrize("resource_id", [42.0, True, None, [42]])
def test_a_resource_id_that_is_not_an_integer_or_text_is_malformed(resource_id: object) -> None:
    body = _gem_body()
    body["resource_id"] = resource_id
    with pytest.raises(EnvelopeError):
        Envelope.from_dict(body)
