"""bridge.catalog.compat: each compatibility rule on payload JSON Schemas, who it breaks,
and the hostile inputs (references that do not resolve or loop, absurd nesting)."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.catalog.compat import BREAKS_NEW, BREAKS_OLD, MAX_DEPTH, compare_schemas
from bridge.errors import CatalogError

OLD_ONLY, NEW_ONLY, BOTH = (BREAKS_OLD,), (BREAKS_NEW,), (BREAKS_OLD, BREAKS_NEW)

BASE: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "name": {"type": "string", "maxLength": 255},
        "role": {"type": "string", "enum": ["admin", "member"]},
        "nick": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["id", "name", "role"],
}


def changed(**edits: Any) -> dict[str, Any]:
    """BASE with properties replaced (None removes one) and top-level keys set."""
    schema = {**BASE, "properties": dict(BASE["properties"])}
    for name, value in edits.pop("properties", {}).items():
        if value is None:
            schema["properties"].pop(name)
        else:
            schema["properties"][name] = value
    schema.update(edits)
    return schema


def only(old: dict[str, Any], new: dict[str, Any]) -> tuple[str, str, tuple[str, ...]]:
    (change,) = compare_schemas(old, new)
    return change.where, change.rule, change.breaks


def test_the_same_schema_has_no_change() -> None:
    assert compare_schemas(BASE, changed()) == []


def test_a_removed_required_field_breaks_consumers_of_old() -> None:
    new = changed(properties={"name": None}, required=["id", "role"])
    assert only(BASE, new) == ("payload.name", "field_removed", OLD_ONLY)


def test_a_removed_optional_field_is_compatible_unless_new_refuses_unknown_fields() -> None:
    assert only(BASE, changed(properties={"nick": None})) == ("payload.nick", "field_removed", ())
    closed = compare_schemas(BASE, changed(properties={"nick": None}, additionalProperties=False))
    assert [(c.rule, c.breaks) for c in closed] == [
        ("object_closed", NEW_ONLY), ("field_removed", NEW_ONLY)
    ]  # fmt: skip


def test_a_new_required_field_without_default_breaks_consumers_of_new() -> None:
    new = changed(properties={"tier": {"type": "string"}}, required=[*BASE["required"], "tier"])
    assert only(BASE, new) == ("payload.tier", "required_field_added", NEW_ONLY)


def test_a_new_required_field_with_a_default_is_compatible() -> None:
    tier = {"type": "string", "default": "free"}
    new = changed(properties={"tier": tier}, required=[*BASE["required"], "tier"])
    assert only(BASE, new) == ("payload.tier", "field_added", ())


def test_a_new_optional_field_is_compatible_unless_old_refused_unknown_fields() -> None:
    new = changed(properties={"tier": {"type": "string"}})
    assert only(BASE, new) == ("payload.tier", "field_added", ())
    closed_old = changed(additionalProperties=False)
    closed_new = changed(properties={"tier": {"type": "string"}}, additionalProperties=False)
    assert only(closed_old, closed_new) == ("payload.tier", "field_added", OLD_ONLY)


def test_required_becoming_optional_and_the_reverse() -> None:
    assert only(BASE, changed(required=["id", "role"])) == (
        "payload.name", "field_now_optional", OLD_ONLY
    )  # fmt: skip
    assert only(BASE, changed(required=[*BASE["required"], "tags"])) == (
        "payload.tags", "field_now_required", NEW_ONLY
    )  # fmt: skip


def test_a_narrowed_type_breaks_consumers_of_new_and_a_widened_one_consumers_of_old() -> None:
    narrowed = changed(properties={"nick": {"type": "string"}})
    assert only(BASE, narrowed) == ("payload.nick", "type_narrowed", NEW_ONLY)
    widened = changed(properties={"name": {"type": ["string", "null"], "maxLength": 255}})
    assert only(BASE, widened) == ("payload.name", "type_widened", OLD_ONLY)
    other = changed(properties={"name": {"type": "integer"}})
    rules = [(c.rule, c.breaks) for c in compare_schemas(BASE, other)]
    assert ("type_changed", BOTH) in rules


def test_integer_to_number_is_a_widening_not_a_change() -> None:
    old = {"type": "object", "properties": {"n": {"type": "integer"}}}
    new = {"type": "object", "properties": {"n": {"type": "number"}}}
    assert only(old, new) == ("payload.n", "type_widened", OLD_ONLY)
    assert only(new, old) == ("payload.n", "type_narrowed", NEW_ONLY)


def test_a_removed_enum_value_breaks_consumers_of_new_an_added_one_consumers_of_old() -> None:
    removed = changed(properties={"role": {"type": "string", "enum": ["admin"]}})
    assert only(BASE, removed) == ("payload.role", "enum_narrowed", NEW_ONLY)
    added = changed(properties={"role": {"type": "string", "enum": ["admin", "member", "x"]}})
    assert only(BASE, added) == ("payload.role", "enum_widened", OLD_ONLY)
    reordered = changed(properties={"role": {"type": "string", "enum": ["member", "admin"]}})
    assert compare_schemas(BASE, reordered) == []
    const = changed(properties={"role": {"const": "admin"}})
    assert only(BASE, const) == ("payload.role", "enum_narrowed", NEW_ONLY)


def test_bounds_tightened_and_loosened() -> None:
    tighter = changed(properties={"name": {"type": "string", "maxLength": 64}})
    assert only(BASE, tighter) == ("payload.name", "constraint_narrowed", NEW_ONLY)
    looser = changed(properties={"name": {"type": "string"}})
    assert only(BASE, looser) == ("payload.name", "constraint_widened", OLD_ONLY)
    pattern = changed(properties={"id": {"type": "string", "format": "uuid", "pattern": "^a"}})
    assert only(BASE, pattern) == ("payload.id", "constraint_changed", BOTH)


def test_array_items_and_nested_objects_are_compared_with_their_path() -> None:
    items = changed(properties={"tags": {"type": "array", "items": {"type": "integer"}}})
    assert only(BASE, items)[:2] == ("payload.tags[]", "type_changed")
    old = {"type": "object", "properties": {"a": {"type": "object", "properties": {
        "b": {"type": "string"}}, "required": ["b"]}}}  # fmt: skip
    new = {"type": "object", "properties": {"a": {"type": "object", "properties": {}}}}
    assert only(old, new) == ("payload.a.b", "field_removed", OLD_ONLY)


def test_local_references_are_followed_on_each_side() -> None:
    old = {"$defs": {"Name": {"type": "string"}}, "type": "object",
           "properties": {"name": {"$ref": "#/$defs/Name"}}, "required": ["name"]}  # fmt: skip
    new = {**old, "$defs": {"Name": {"type": "integer"}}}
    assert only(old, new)[:2] == ("payload.name", "type_changed")
    assert compare_schemas(old, dict(old)) == []


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("#/$defs/Missing", "does not resolve"),
        ("https://example.test/schema.json", "not local"),
        ("#/$defs/Loop", "refers to itself"),
    ],
)
def test_a_reference_that_cannot_be_followed_is_an_error_not_a_pass(ref: str, message: str) -> None:
    new = changed(properties={"id": {"$ref": ref}}, **{"$defs": {"Loop": {"$ref": "#/$defs/Loop"}}})
    with pytest.raises(CatalogError, match=message):
        compare_schemas(BASE, new)


def test_absurd_nesting_is_refused_without_recursion_errors() -> None:
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(MAX_DEPTH + 5):
        deep = {"type": "object", "properties": {"x": deep}}
    with pytest.raises(CatalogError, match="nested deeper"):
        compare_schemas(deep, deep)
    unions: dict[str, Any] = {"type": "string"}
    for _ in range(MAX_DEPTH + 5):
        unions = {"anyOf": [unions]}
    with pytest.raises(CatalogError, match="nested deeper"):
        compare_schemas(unions, {"type": "string"})


def test_a_schema_that_is_not_an_object_is_an_error() -> None:
    with pytest.raises(CatalogError, match="JSON object"):
        compare_schemas(BASE, changed(properties={"name": ["not", "a", "schema"]}))
