"""The outbox row's stored body and the envelope the relay publishes from it
(bridge.outbox.body): the published bytes are the envelope, whatever the ids hold."""

from __future__ import annotations

import json

import pytest

from bridge.envelope import MSG_ID_HEADER, Envelope
from bridge.outbox.body import (
    COLUMN_FIELDS,
    published_body,
    stored_body,
    stored_headers,
)

AWKWARD_IDS = [
    "42",
    '["east", 1]',  # a composite key's resource_id
    'quote"d\\back\\slash',
    "tab\tnew\nline\x01",
    "ünïcødé-🙂",
    "",
]


def _envelope(resource_id: str, **extra: object) -> Envelope:
    return Envelope(
        event_type="organization.updated",
        producer="system_a",
        resource_type="organization",
        resource_id=resource_id,
        payload={"id": resource_id, "name": 'Ä "b" \\c', "nested": {"n": [1, 2.5, None]}},
        **extra,  # type: ignore[arg-type]
    )


def _published(envelope: Envelope, rendering: str) -> bytes:
    return published_body(
        rendering,
        event_id=envelope.event_id,
        event_type=envelope.event_type,
        resource_type=envelope.resource_type,
        resource_id=envelope.resource_id,
    )


@pytest.mark.parametrize("resource_id", AWKWARD_IDS)
def test_the_published_bytes_are_the_envelope(resource_id: str) -> None:
    envelope = _envelope(resource_id)
    body = stored_body(envelope)
    assert not set(COLUMN_FIELDS) & set(body)
    # PostgreSQL renders JSONB with ", " and ": "; compact text must work as well
    for rendering in (json.dumps(body), json.dumps(body, separators=(",", ":"))):
        published = _published(envelope, rendering)
        assert json.loads(published) == envelope.to_dict()
        if resource_id:  # (an empty id is refused by the consumer, spliced or not)
            assert Envelope.from_bytes(published) == envelope  # its strict decoding


def test_an_empty_body_and_a_body_that_is_not_an_object() -> None:
    envelope = _envelope("1")
    assert json.loads(_published(envelope, "{}")) == {
        name: getattr(envelope, name) for name in COLUMN_FIELDS
    }
    assert json.loads(_published(envelope, "{ }"))["resource_id"] == "1"
    for broken in ("[]", "null", '"{}"', ""):
        with pytest.raises(ValueError, match="not a JSON object"):
            _published(envelope, broken)


def test_stored_headers_leave_the_message_id_to_the_relay() -> None:
    traced = _envelope("1", trace_id="0af7651916cd43dd8448eb211c80319c")
    assert MSG_ID_HEADER in traced.headers()
    assert MSG_ID_HEADER not in stored_headers(traced)
    assert {k: v for k, v in traced.headers().items() if k != MSG_ID_HEADER} == stored_headers(
        traced
    )
