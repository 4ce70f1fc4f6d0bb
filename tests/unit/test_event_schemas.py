"""EventSchemas: declaring versions, the start-up gap check, upcasting, too-new versions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from bridge.config import BridgeConfig
from bridge.envelope import Envelope
from bridge.errors import ConfigError, Reject
from bridge.event_schemas import EventSchemas
from bridge.routing.outcomes import REASON_INVALID_PAYLOAD, REASON_UNSUPPORTED_SCHEMA_VERSION
from bridge.runtime import Bridge


def requires(*names: str) -> Any:
    """A validator demanding ``names``; returns the payload unchanged."""

    def validate(payload: Mapping[str, Any]) -> Mapping[str, Any]:
        for name in names:
            if name not in payload:
                raise ValueError(f"{name}: field required")
        return payload

    return validate


def add(name: str, value: Any) -> Any:
    def upcast(payload: Mapping[str, Any], envelope: Envelope) -> Mapping[str, Any]:
        return {**payload, name: value}

    return upcast


def event(version: int, payload: Mapping[str, Any], event_type: str = "widget.updated") -> Envelope:
    return Envelope(
        event_type=event_type,
        producer="peer",
        resource_type=event_type.split(".", maxsplit=1)[0],
        resource_id="1",
        payload=payload,
        schema_version=version,
    )


class Observer:
    def __init__(self) -> None:
        self.upcasts: list[tuple[str, int]] = []
        self.unsupported: list[tuple[str, int]] = []

    def event_upcast(self, event_type: str, from_version: int) -> None:
        self.upcasts.append((event_type, from_version))

    def event_unsupported(self, event_type: str, version: int) -> None:
        self.unsupported.append((event_type, version))


def three_versions() -> EventSchemas:
    schemas = EventSchemas()
    schemas.version("widget", 1, requires("name"))
    schemas.version("widget", 2, requires("name", "color"))
    schemas.version("widget", 3, requires("name", "color", "size"))
    schemas.upcaster("widget", 1, add("color", "red"))
    schemas.upcaster("widget", 2, add("size", 0))
    return schemas


def test_old_event_is_upcast_through_the_whole_chain_and_counted() -> None:
    schemas = three_versions()
    schemas.check()
    observer = Observer()
    original = event(1, {"name": "w"})
    resolved = schemas.resolve(original, observer)
    assert resolved.schema_version == 3
    assert dict(resolved.payload) == {"name": "w", "color": "red", "size": 0}
    assert resolved.event_id == original.event_id and original.payload == {"name": "w"}
    assert observer.upcasts == [("widget.updated", 1), ("widget.updated", 2)]


def test_current_event_passes_unchanged() -> None:
    schemas = three_versions()
    current = event(3, {"name": "w", "color": "blue", "size": 2})
    observer = Observer()
    assert schemas.resolve(current, observer) is current
    assert observer.upcasts == [] and observer.unsupported == []


def test_newer_version_is_rejected_as_unsupported() -> None:
    observer = Observer()
    with pytest.raises(Reject) as caught:
        three_versions().resolve(event(4, {"name": "w"}), observer)
    assert caught.value.reason == REASON_UNSUPPORTED_SCHEMA_VERSION
    assert "schema_version 4 is newer" in str(caught.value)
    assert observer.unsupported == [("widget.updated", 4)]


def test_version_older_than_the_oldest_accepted_is_unsupported() -> None:
    schemas = EventSchemas()
    schemas.version("widget", 2, requires("name"))
    schemas.version("widget", 3, requires("name"))
    schemas.upcaster("widget", 2, add("x", 1))
    schemas.check()
    with pytest.raises(Reject) as caught:
        schemas.resolve(event(1, {"name": "w"}))
    assert caught.value.reason == REASON_UNSUPPORTED_SCHEMA_VERSION
    assert "older than" in str(caught.value)


def test_invalid_payload_is_rejected_naming_the_field_at_either_end_of_the_chain() -> None:
    schemas = three_versions()
    with pytest.raises(Reject) as caught:
        schemas.resolve(event(1, {"colour": "x"}))  # fails its own version's model
    assert caught.value.reason == REASON_INVALID_PAYLOAD
    assert "schema v1" in str(caught.value) and "name: field required" in str(caught.value)

    broken = EventSchemas()
    broken.version("widget", 1, requires("name"))
    broken.version("widget", 2, requires("name", "color"))
    broken.upcaster("widget", 1, add("paint", "red"))  # forgets "color"
    with pytest.raises(Reject) as caught:
        broken.resolve(event(1, {"name": "w"}))
    assert caught.value.reason == REASON_INVALID_PAYLOAD
    assert "schema v2" in str(caught.value) and "color" in str(caught.value)


def test_upcaster_bug_propagates_as_is() -> None:
    def bug(payload: Mapping[str, Any], envelope: Envelope) -> Mapping[str, Any]:
        raise RuntimeError("upcaster bug")

    schemas = EventSchemas()
    schemas.version("widget", 1, requires())
    schemas.version("widget", 2, requires())
    schemas.upcaster("widget", 1, bug)
    with pytest.raises(RuntimeError, match="upcaster bug"):
        schemas.resolve(event(1, {}))


def test_undeclared_type_is_not_versioned() -> None:
    schemas = three_versions()
    other = event(7, {"anything": True}, event_type="gadget.created")
    assert schemas.resolve(other) is other
    assert schemas.current_version("gadget.created", "gadget") == 1
    assert EventSchemas().current_version("widget.updated", "widget") == 1


def test_exact_event_type_wins_over_the_resource_type() -> None:
    schemas = three_versions()
    schemas.version("widget.deleted", 1, requires("id"))
    schemas.check()
    assert schemas.current_version("widget.updated", "widget") == 3
    assert schemas.current_version("widget.deleted", "widget") == 1
    deleted = event(1, {"id": "1"}, event_type="widget.deleted")
    assert schemas.resolve(deleted) is deleted  # no upcast: its own chain is at v1
    with pytest.raises(Reject) as caught:
        schemas.resolve(event(2, {"id": "1"}, event_type="widget.deleted"))
    assert caught.value.reason == REASON_UNSUPPORTED_SCHEMA_VERSION


def test_check_names_the_type_and_the_missing_upcaster() -> None:
    schemas = EventSchemas()
    schemas.version("widget", 1, requires())
    schemas.version("widget", 2, requires())
    schemas.version("widget", 3, requires())
    schemas.upcaster("widget", 1, add("a", 1))
    with pytest.raises(ConfigError, match=r"widget: no upcaster from v2 to v3"):
        schemas.check()


def test_check_names_a_version_without_model() -> None:
    schemas = EventSchemas()
    schemas.version("gadget", 1, requires())
    schemas.version("gadget", 3, requires())
    schemas.upcaster("gadget", 1, add("a", 1))
    schemas.upcaster("gadget", 2, add("b", 1))
    with pytest.raises(ConfigError, match=r"gadget: schema version 2 has no payload model"):
        schemas.check()


def test_check_rejects_stray_upcasters_and_upcasters_without_versions() -> None:
    stray = EventSchemas()
    stray.version("widget", 1, requires())
    stray.upcaster("widget", 1, add("a", 1))
    with pytest.raises(ConfigError, match=r"widget: upcaster from v1 lies outside"):
        stray.check()
    orphan = EventSchemas()
    orphan.upcaster("widget", 1, add("a", 1))
    with pytest.raises(ConfigError, match=r"widget: upcasters declared but no schema version"):
        orphan.check()


def test_declaring_twice_or_a_bad_version_is_a_config_error() -> None:
    schemas = three_versions()
    with pytest.raises(ConfigError, match="already declared"):
        schemas.version("widget", 2, requires())
    with pytest.raises(ConfigError, match="already declared"):
        schemas.upcaster("widget", 1, add("a", 1))
    for bad in (0, -1, True):
        with pytest.raises(ConfigError, match="integers >= 1"):
            schemas.version("widget", bad, requires())
    three_versions().check()  # a complete chain passes
    EventSchemas().check()  # nothing declared passes


async def test_bridge_start_fails_fast_on_a_gap_before_connecting() -> None:
    gap = EventSchemas()
    gap.version("widget", 1, requires())
    gap.version("widget", 2, requires())
    engine = create_async_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    config = BridgeConfig(app_name="a", destination_app="b", nats_urls=("nats://127.0.0.1:1",))
    bridge = Bridge(config, engine=engine, event_schemas=gap)
    with pytest.raises(ConfigError, match="widget: no upcaster from v1 to v2"):
        await bridge.start(timeout=1)
    assert not bridge.connection.is_connected
    await engine.dispose()


def test_publish_version_pins_what_producers_stamp_while_consuming_the_newest() -> None:
    schemas = three_versions()
    schemas.publish_version("widget", 2)
    schemas.check()
    assert schemas.current_version("widget.created", "widget") == 2
    resolved = schemas.resolve(event(2, {"name": "w", "color": "red"}))
    assert resolved.schema_version == 3 and resolved.payload["size"] == 0  # still consumes v3
    bad = three_versions()
    bad.publish_version("widget", 4)
    with pytest.raises(ConfigError, match="widget: publish version 4 is not a declared version"):
        bad.check()


def test_a_declared_json_schema_is_kept_as_a_copy_and_read_back_per_version() -> None:
    schemas = EventSchemas()
    schema: dict[str, Any] = {"type": "object", "required": ["id"]}
    schemas.version("widget", 1, requires("id"), json_schema=schema)
    schemas.version("widget", 2, requires("id"))
    schemas.upcaster("widget", 1, add("x", 1))
    schemas.publish_version("widget", 1)
    schema["required"].append("changed later")
    (declared,) = schemas.declarations()
    assert declared.type_ == "widget" and not declared.is_event_type
    assert declared.versions == (1, 2) and declared.publish_version == 1
    assert declared.json_schemas == {1: {"type": "object", "required": ["id"]}}


@pytest.mark.parametrize(
    ("json_schema", "message"),
    [
        (["type", "object"], "must be a JSON Schema object"),
        ({"enum": {1, 2}}, "not JSON"),
        ({"maximum": float("nan")}, "not JSON"),
        ({("a", "b"): 1}, "not JSON"),
    ],
)
def test_a_json_schema_that_is_not_a_json_object_is_refused(json_schema: Any, message: str) -> None:
    schemas = EventSchemas()
    with pytest.raises(ConfigError, match=message):
        schemas.version("widget", 1, requires(), json_schema=json_schema)
    assert schemas.declarations() == ()  # nothing half-declared
