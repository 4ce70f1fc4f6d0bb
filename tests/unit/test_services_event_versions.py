"""The domain's event versions: the gem's v1 row upcast to our v2 row, validated (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.envelope import Envelope
from bridge.errors import Reject
from bridge.routing.outcomes import REASON_INVALID_PAYLOAD, REASON_UNSUPPORTED_SCHEMA_VERSION
from services.shared.event_versions import CURRENT_VERSION, event_schemas

ORG_ID = 42  # a Rails app's integer primary key, a bare JSON number
GEM_ORG = {  # what the Ruby gem's examples publish: no origin, no deleted_at
    "id": ORG_ID,
    "name": "Acme",
    "domain": "acme.test",
    "active": True,
    "created_at": "2026-01-29T10:00:00.000Z",
    "updated_at": "2026-01-29T10:00:00.000Z",
}


def envelope(payload: dict[str, Any], version: int, action: str = "created") -> Envelope:
    return Envelope(
        event_type=f"organization.{action}",
        producer="rails_app",
        resource_type="organization",
        resource_id=str(payload.get("id")),
        payload=payload,
        schema_version=version,
    )


def test_declared_chain_is_complete_and_current_is_v2() -> None:
    schemas = event_schemas()
    schemas.check()
    assert schemas.types == {"organization", "user"}
    for resource in ("organization", "user"):
        assert schemas.current_version(f"{resource}.updated", resource) == CURRENT_VERSION == 2


def test_gem_row_is_upcast_with_origin_from_the_envelope() -> None:
    resolved = event_schemas().resolve(envelope(GEM_ORG, 1))
    assert resolved.schema_version == 2
    assert dict(resolved.payload) == {**GEM_ORG, "origin": "rails_app", "deleted_at": None}


def test_v1_row_that_already_has_origin_and_tombstone_keeps_them() -> None:
    row = {**GEM_ORG, "origin": "system_a", "deleted_at": "2026-01-29T11:00:00.000000Z"}
    resolved = event_schemas().resolve(envelope(row, 1, "deleted"))
    assert resolved.payload["origin"] == "system_a"
    assert resolved.payload["deleted_at"] == "2026-01-29T11:00:00.000000Z"


def test_missing_active_is_tolerated_like_the_handler() -> None:
    row = {k: v for k, v in GEM_ORG.items() if k != "active"}
    assert "active" not in event_schemas().resolve(envelope(row, 1)).payload


@pytest.mark.parametrize(
    ("payload", "version", "field"),
    [
        ({**GEM_ORG, "active": "yes"}, 1, "active"),
        ({**GEM_ORG, "updated_at": "yesterday"}, 1, "updated_at"),
        ({k: v for k, v in GEM_ORG.items() if k != "domain"}, 1, "domain"),
        (GEM_ORG, 2, "origin"),  # a v2 row must carry its origin
        # Ids are JSON integers 1..2**53-1: never text, a UUID, a float, a bool, 0 or above.
        ({**GEM_ORG, "id": "42"}, 1, "id"),
        ({**GEM_ORG, "id": "0b8e4d1c-5f3a-4c1e-9d2b-7a6f5e4d3c2b"}, 1, "id"),
        ({**GEM_ORG, "id": 42.0}, 1, "id"),
        ({**GEM_ORG, "id": True}, 1, "id"),
        ({**GEM_ORG, "id": 0}, 1, "id"),
        ({**GEM_ORG, "id": -42}, 1, "id"),
        ({**GEM_ORG, "id": 2**53}, 1, "id"),
        ({**GEM_ORG, "id": None}, 2, "id"),
    ],
)
def test_invalid_rows_are_rejected_naming_the_field(
    payload: dict[str, Any], version: int, field: str
) -> None:
    with pytest.raises(Reject) as caught:
        event_schemas().resolve(envelope(payload, version))
    assert caught.value.reason == REASON_INVALID_PAYLOAD
    assert field in str(caught.value)


def test_gem_user_with_integer_organization_id_is_valid_and_a_text_one_is_not() -> None:
    user = {
        "id": 7,
        "organization_id": ORG_ID,
        "name": "Ann",
        "email": "ann@acme.test",
        "role": "admin",
        "created_at": "2026-01-29T10:00:00.000Z",
        "updated_at": "2026-01-29T10:00:00.000Z",
    }

    def user_event(payload: dict[str, Any]) -> Envelope:
        return Envelope(
            event_type="user.created",
            producer="rails_app",
            resource_type="user",
            resource_id="7",
            payload=payload,
            schema_version=1,
        )

    resolved = event_schemas().resolve(user_event(user))
    assert resolved.payload["organization_id"] == ORG_ID and resolved.payload["id"] == 7
    with pytest.raises(Reject, match="organization_id"):
        event_schemas().resolve(user_event({**user, "organization_id": str(ORG_ID)}))


def test_v3_is_unsupported_until_declared() -> None:
    with pytest.raises(Reject) as caught:
        event_schemas().resolve(envelope({**GEM_ORG, "origin": "x"}, 3))
    assert caught.value.reason == REASON_UNSUPPORTED_SCHEMA_VERSION
