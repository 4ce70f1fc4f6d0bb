"""Sync events as rows: what the services' sync handlers read from a payload and leave behind.

- :func:`decode`: an event's payload as column values of its resource (``organization``
  or ``user``, :data:`ORGANIZATION` / :data:`USER`), or ``Reject("invalid_payload")``;
  a ``*.deleted`` event without ``deleted_at`` becomes a tombstone at ``occurred_at``.
- :func:`json_row`: the JSON of a row a conflict records.
- :func:`stale_row`: the ``sync_stale_events`` row of an event judged stale.

Used by :mod:`services.shared.handlers` (which states the contract).  No I/O.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bridge import Envelope, Reject
from bridge.envelope import format_timestamp, parse_timestamp
from bridge.errors import EnvelopeError
from bridge.routing.outcomes import REASON_INVALID_PAYLOAD
from bridge.sync.versions import Version
from services.shared.models import Organization, User


@dataclass(frozen=True, slots=True)
class Spec:
    """What differs between the two synced resources."""

    model: type[Organization] | type[User]
    natural_key: str
    strings: tuple[str, ...]
    uuids: tuple[str, ...]


ORGANIZATION = Spec(Organization, "domain", ("name", "domain", "origin"), ("id",))
USER = Spec(User, "email", ("name", "email", "role", "origin"), ("id", "organization_id"))


def stale_row(envelope: Envelope, incoming: Version, current: Version) -> dict[str, Any]:
    return {
        "event_id": uuid.UUID(envelope.event_id),
        "resource_type": envelope.resource_type,
        "resource_id": uuid.UUID(envelope.resource_id),
        "incoming_updated_at": incoming.updated_at,
        "incoming_origin": incoming.origin,
        "local_updated_at": current.updated_at,
        "local_origin": current.origin,
    }


def decode(envelope: Envelope, spec: Spec) -> dict[str, Any]:
    """The payload as column values of ``spec.model``; Reject ``invalid_payload`` if it is not."""
    payload = envelope.payload
    try:
        values: dict[str, Any] = {}
        for name in spec.uuids:
            values[name] = uuid.UUID(str(payload[name]))
        for name in spec.strings:
            value = payload[name]
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string")
            values[name] = value
        active = payload.get("active", True)
        if not isinstance(active, bool):
            raise ValueError("active must be a boolean")
        values["active"] = active
        values["created_at"] = _timestamp(payload["created_at"])
        values["updated_at"] = _timestamp(payload["updated_at"])
        deleted = payload.get("deleted_at")
        values["deleted_at"] = _timestamp(deleted) if deleted is not None else None
    except (KeyError, ValueError, TypeError, EnvelopeError) as exc:
        raise Reject(
            f"{envelope.event_type} payload is not a {envelope.resource_type} row: {exc!r}",
            reason=REASON_INVALID_PAYLOAD,
        ) from exc
    if str(values["id"]) != envelope.resource_id:
        raise Reject(
            f"payload id {values['id']} differs from resource_id {envelope.resource_id}",
            reason=REASON_INVALID_PAYLOAD,
        )
    if envelope.action == "deleted" and values["deleted_at"] is None:
        # A producer that hard-deletes sends no deleted_at: the delete is a version at occurred_at.
        deleted_at = parse_timestamp(envelope.occurred_at)
        values["deleted_at"] = deleted_at
        values["updated_at"] = max(values["updated_at"], deleted_at)
    return values


def _timestamp(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"timestamp must be an ISO 8601 string, got {value!r}")
    return parse_timestamp(value)


def json_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row's columns as JSON values (timestamps ISO 8601, UUIDs as text)."""
    return {str(name): _json_value(value) for name, value in row.items()}


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_timestamp(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    return value
