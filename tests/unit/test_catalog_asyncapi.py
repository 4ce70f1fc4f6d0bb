"""The event catalog (bridge.catalog.asyncapi): a valid AsyncAPI 3.0.0 document that
describes what the code really sends — real envelopes and headers validate against it,
forged ones do not — and leaks no credential."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
from catalog_support import asyncapi_errors, part_validator
from pydantic import BaseModel

from bridge import BridgeConfig, Envelope, EventSchemas, configure_bidirectional
from bridge.catalog import asyncapi
from bridge.catalog.document import X_PUBLISHED, X_SCHEMA_VERSION, X_TYPE
from bridge.errors import ConfigError, EnvelopeError
from services.shared.event_versions import event_schemas

ORG_ID = 1_234_567_890_123  # ids are JSON integers


def accept(payload: Mapping[str, Any]) -> Mapping[str, Any]:
    return payload


def config(**overrides: Any) -> BridgeConfig:
    return configure_bidirectional(app_name="system_a", destination_app="system_b", **overrides)


def org_row(**fields: Any) -> dict[str, Any]:
    return {
        "id": ORG_ID, "name": "Acme", "domain": "acme.test", "active": True,
        "created_at": "2026-01-02T03:04:05.000006Z", "updated_at": "2026-01-02T03:04:05.000006Z",
        "origin": "system_a", "deleted_at": None, **fields,
    }  # fmt: skip


def org_event(version: int = 2, **fields: Any) -> Envelope:
    return Envelope(
        event_type="organization.updated",
        producer="system_a",
        resource_type="organization",
        resource_id=str(ORG_ID),
        payload=org_row(**fields),
        schema_version=version,
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )


@pytest.mark.parametrize(
    "overrides",
    [{}, {"consumer_mode": "push"}, {"use_dlq": False}, {"dlq_retention": "stream"}],
    ids=["pull", "push", "no-dlq", "dlq-stream-retention"],
)
def test_the_services_catalog_is_a_valid_asyncapi_3_document(overrides: dict[str, Any]) -> None:
    document = asyncapi(config(**overrides), event_schemas())
    assert document["asyncapi"] == "3.0.0"
    assert asyncapi_errors(document) == []
    assert ("deadLetters" in document["channels"]) is (overrides.get("use_dlq", True))


def test_the_validation_can_fail_a_document_that_breaks_the_specification() -> None:
    document = asyncapi(config(), event_schemas())
    as_v2 = json.loads(json.dumps(document))
    as_v2["operations"]["publishEvents"]["action"] = "publish"  # AsyncAPI 2's word
    assert any("publishEvents" in error for error in asyncapi_errors(as_v2))
    bad_payload = json.loads(json.dumps(document))
    bad_payload["components"]["schemas"]["user.v1"]["type"] = 5  # not a JSON Schema
    assert asyncapi_errors(bad_payload) != []


def test_channels_are_the_configured_subjects_and_list_every_declared_version() -> None:
    document = asyncapi(config(consumer_mode="push"), event_schemas())
    channels, operations = document["channels"], document["operations"]
    assert channels["published"]["address"] == "system_a.sync.system_b"
    assert channels["consumed"]["address"] == "system_b.sync.system_a"
    assert channels["deadLetters"]["address"] == "system_a.sync.dlq"
    assert sorted(channels["consumed"]["messages"]) == [
        "organization.v1", "organization.v2", "user.v1", "user.v2"
    ]  # fmt: skip
    assert sorted(channels["published"]["messages"]) == ["organization.v2", "user.v2"]
    assert operations["consumeEvents"]["bindings"]["nats"]["queue"] == "system_a-workers"
    message = document["components"]["messages"]["user.v1"]
    assert (message[X_TYPE], message[X_SCHEMA_VERSION], message[X_PUBLISHED]) == ("user", 1, False)
    # every operation's message is one of its channel's
    for operation in operations.values():
        channel = operation["channel"]["$ref"].rsplit("/", 1)[1]
        for ref in operation["messages"]:
            assert ref["$ref"].rsplit("/", 1)[1] in channels[channel]["messages"]


def test_a_pinned_publish_version_is_the_published_message() -> None:
    schemas = event_schemas()
    schemas.publish_version("user", 1)
    published = asyncapi(config(), schemas)["channels"]["published"]["messages"]
    assert sorted(published) == ["organization.v2", "user.v1"]


def test_real_envelopes_and_headers_validate_and_forged_ones_do_not() -> None:
    document = asyncapi(config(), event_schemas())
    body = part_validator(document, "/components/messages/organization.v2/payload")
    headers = part_validator(document, "/components/messages/organization.v2/headers")
    event = org_event()
    assert list(body.iter_errors(json.loads(event.to_bytes()))) == []
    assert list(headers.iter_errors(event.headers())) == []
    v1 = org_event(1)
    v1_body = {**v1.to_dict(), "payload": {k: v for k, v in org_row().items() if k != "origin"}}
    assert list(part_validator(document, "/components/messages/organization.v1/payload")
                .iter_errors(v1_body)) == []  # fmt: skip

    def invalid(**changes: Any) -> bool:
        return not body.is_valid({**event.to_dict(), **changes})

    assert invalid(event_id="not-a-uuid")
    assert invalid(schema_version=3)  # v2's message is v2 only
    assert invalid(resource_type="user")
    assert invalid(payload=org_row(origin=""))  # the model's min_length
    assert invalid(payload={k: v for k, v in org_row().items() if k != "domain"})
    assert invalid(producer="x" * 1000)  # longer than the inbox column
    assert not body.is_valid({k: v for k, v in event.to_dict().items() if k != "occurred_at"})
    assert not headers.is_valid({"Nats-Msg-Id": "forged"})
    assert not headers.is_valid({"Nats-Msg-Id": event.event_id, "traceparent": "garbage"})


def test_a_resource_declaration_excludes_the_event_types_declared_on_their_own() -> None:
    schemas = EventSchemas()
    schemas.version("user", 1, accept, json_schema={"type": "object"})
    schemas.version("user.deleted", 1, accept, json_schema={"type": "object"})
    document = asyncapi(config(), schemas)
    assert asyncapi_errors(document) == []
    resource = part_validator(document, "/components/messages/user.v1/payload")
    exact = part_validator(document, "/components/messages/user.deleted.v1/payload")

    def body(event_type: str) -> dict[str, Any]:
        return Envelope(event_type, "system_b", "user", "1", {}).to_dict()

    assert resource.is_valid(body("user.updated"))
    assert not resource.is_valid(body("user.deleted"))
    assert exact.is_valid(body("user.deleted"))
    assert not exact.is_valid(body("user.updated"))


class Address(BaseModel):
    city: str


class Customer(BaseModel):
    name: str
    address: Address


def test_a_payload_schema_with_definitions_keeps_its_references_resolvable() -> None:
    schemas = EventSchemas()
    schemas.version("customer", 1, accept, json_schema=Customer.model_json_schema())
    assert "$defs" in Customer.model_json_schema()  # the case under test
    document = asyncapi(config(), schemas)
    assert asyncapi_errors(document) == []
    payload = part_validator(document, "/components/schemas/customer.v1")
    assert payload.is_valid({"name": "n", "address": {"city": "c"}})
    assert not payload.is_valid({"name": "n", "address": {"city": 5}})


def test_a_version_without_json_schema_is_listed_as_an_object_with_a_note() -> None:
    schemas = EventSchemas()
    schemas.version("widget", 1, accept)
    document = asyncapi(config(), schemas)
    assert asyncapi_errors(document) == []
    schema = document["components"]["schemas"]["widget.v1"]
    assert schema["type"] == "object" and "No JSON Schema" in schema["description"]


def test_credentials_in_nats_urls_never_reach_the_document() -> None:
    cfg = config(nats_urls=("nats://admin:s3cret-pw@nats.internal:4222", "tls://[::1]:4443"))
    document = asyncapi(cfg, event_schemas())
    text = json.dumps(document)
    assert "s3cret-pw" not in text and "admin" not in text
    assert document["servers"] == {
        "nats-1": {"host": "nats.internal:4222", "protocol": "nats"},
        "nats-2": {"host": "[::1]:4443", "protocol": "tls"},
    }
    assert asyncapi_errors(document) == []


def test_a_broken_version_chain_is_refused_not_documented() -> None:
    schemas = EventSchemas()
    schemas.version("widget", 1, accept)
    schemas.version("widget", 2, accept)  # no upcaster 1 -> 2
    with pytest.raises(ConfigError, match="no upcaster from v1 to v2"):
        asyncapi(config(), schemas)


def test_the_document_is_the_same_for_the_same_input() -> None:
    first = json.dumps(asyncapi(config(), event_schemas()))
    assert first == json.dumps(asyncapi(config(), event_schemas()))


def test_the_envelope_schema_accepts_what_the_decoder_accepts_and_no_more() -> None:
    """A v1 body without schema_version (the decoder reads 1) fits v1, not v2; a body
    the decoder refuses (no event_id) fits neither."""
    document = asyncapi(config(), event_schemas())
    v1 = part_validator(document, "/components/messages/organization.v1/payload")
    v2 = part_validator(document, "/components/messages/organization.v2/payload")
    body = {k: v for k, v in org_event(1).to_dict().items() if k != "schema_version"}
    body["payload"] = {k: v for k, v in org_row().items() if k != "origin"}
    assert Envelope.from_dict(body).schema_version == 1
    assert v1.is_valid(body) and not v2.is_valid(body)
    with pytest.raises(EnvelopeError):
        Envelope.from_dict({k: v for k, v in body.items() if k != "event_id"})
    assert not v1.is_valid({k: v for k, v in body.items() if k != "event_id"})
