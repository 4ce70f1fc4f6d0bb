from __future__ import annotations

import json

import pytest

from bridge.envelope import MSG_ID_HEADER, Envelope
from bridge.errors import EnvelopeError


def make() -> Envelope:
    return Envelope(
        event_type="organization.created",
        producer="system_a",
        resource_type="organization",
        resource_id="4b6f4e3c-0000-4000-8000-000000000001",
        payload={"name": "Acme", "domain": "acme.test"},
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )


def test_round_trip_through_bytes_and_headers() -> None:
    env = make()
    back = Envelope.from_bytes(env.to_bytes(), env.headers())
    assert back == env
    assert env.headers()[MSG_ID_HEADER] == env.event_id  # exact case: server dedups on it
    body = json.loads(env.to_bytes())
    assert body["schema_version"] == 1
    assert body["occurred_at"].endswith("Z") and "." in body["occurred_at"]
    assert body["origin"] == "system_a"


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "JSON object"),
        (b'{"event_type": "x"}', "missing field"),
    ],
)
def test_malformed_bodies_raise_envelope_error(data: bytes, match: str) -> None:
    with pytest.raises(EnvelopeError, match=match):
        Envelope.from_bytes(data)


def test_bad_event_id_and_header_mismatch() -> None:
    body = make().to_dict()
    body["event_id"] = "nope"
    with pytest.raises(EnvelopeError, match="UUID"):
        Envelope.from_dict(body)
    env = make()
    with pytest.raises(EnvelopeError, match="does not match"):
        Envelope.from_bytes(env.to_bytes(), {MSG_ID_HEADER: "other"})


def test_with_new_id_records_causation() -> None:
    env = make()
    replay = env.with_new_id()
    assert replay.event_id != env.event_id
    assert replay.causation_id == env.event_id
