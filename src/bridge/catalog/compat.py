"""Whether a new payload JSON Schema keeps consumers working: the rules, one change at a time.

During a rollout both versions of a schema are on the wire at once, and dead letters
written before it are replayed after it, so a change is judged in both directions:

- **consumers of OLD** (not yet upgraded) read events NEW producers send: a field they
  require must still be sent, a value must still be one they accept;
- **consumers of NEW** (already upgraded) read events OLD producers sent — still in
  flight, or replayed from the dead-letter queue: a field NEW requires must have been
  sent by OLD, a value OLD could send must still be accepted.

A change that breaks neither is compatible.  The rules (:func:`compare_schemas`), as
``rule``: change → whom it breaks:

- ``field_removed``: a required field removed → OLD; an optional one → nobody (NEW when
  NEW refuses unknown fields, ``additionalProperties: false``);
- ``required_field_added``: a new required field without ``default`` → NEW;
- ``field_added``: a new optional field (or a required one with a ``default``) → nobody
  (OLD when OLD refuses unknown fields);
- ``field_now_required`` (no ``default``) → NEW; ``field_now_optional`` → OLD;
- ``type_narrowed`` (``string`` or ``null`` → ``string``) → NEW; ``type_widened`` → OLD;
  ``type_changed`` (``string`` → ``integer``) → both;
- ``enum_narrowed``: an enum value removed, or an enum introduced → NEW;
  ``enum_widened``: a value added, or the enum dropped → OLD;
- ``constraint_narrowed``: a bound tightened or added (``maxLength`` 255 → 64) → NEW;
  ``constraint_widened``: loosened or removed → OLD; ``constraint_changed``: ``pattern``
  or ``format`` changed → both;
- ``object_closed``: ``additionalProperties: false`` added → NEW; ``object_opened``:
  removed → OLD.

Scope: ``type``, ``enum``/``const``, ``properties``/``required``/``additionalProperties``,
``items`` (one schema), ``anyOf``/``oneOf`` as a union of types, string/number/array
bounds, ``pattern``, ``format``, and local ``$ref``s (``#/...``) into the same document.
Other keywords (``allOf``, ``if``/``then``, ``patternProperties``, ``dependencies``,
remote references) are not compared: a change there is not seen — the limit is
documented (docs/OPERATIONS.md, "Schema diff").
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bridge.errors import CatalogError

__all__ = ["BREAKS_NEW", "BREAKS_OLD", "Change", "compare_schemas"]

#: Consumers of OLD, reading events NEW sends.
BREAKS_OLD = "consumers_of_old"
#: Consumers of NEW, reading events OLD sent (in flight, or replayed dead letters).
BREAKS_NEW = "consumers_of_new"
_BOTH = (BREAKS_OLD, BREAKS_NEW)
_ALL_TYPES = frozenset({"array", "boolean", "integer", "null", "number", "object", "string"})
_LOWER_BOUNDS = ("minLength", "minimum", "exclusiveMinimum", "minItems", "minProperties")
_UPPER_BOUNDS = ("maxLength", "maximum", "exclusiveMaximum", "maxItems", "maxProperties")
_EXACT = ("pattern", "format")
#: Deeper schemas are refused rather than compared (each level is a recursion step).
MAX_DEPTH = 64


@dataclass(frozen=True, slots=True)
class Change:
    """One difference: where (``organization v2: payload.name``), which rule, whom it
    breaks (empty: compatible) and a sentence for people."""

    where: str
    rule: str
    breaks: tuple[str, ...]
    detail: str

    @property
    def compatible(self) -> bool:
        return not self.breaks

    def to_dict(self) -> dict[str, Any]:
        return {
            "where": self.where,
            "rule": self.rule,
            "compatible": self.compatible,
            "breaks": list(self.breaks),
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class _Side:
    schema: Mapping[str, Any]
    root: Mapping[str, Any]


def compare_schemas(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    *,
    where: str = "payload",
    old_root: Mapping[str, Any] | None = None,
    new_root: Mapping[str, Any] | None = None,
) -> list[Change]:
    """Every change from ``old`` to ``new`` the rules (module doc) see, in document order.

    ``old_root``/``new_root``: the documents ``#/...`` references resolve in (default:
    the schemas themselves).  Raises :class:`~bridge.errors.CatalogError` for a
    reference that does not resolve, a reference cycle without end, or nesting deeper
    than :data:`MAX_DEPTH`.
    """
    changes: list[Change] = []
    _compare(
        _Side(old, old_root if old_root is not None else old),
        _Side(new, new_root if new_root is not None else new),
        where,
        changes,
        0,
    )
    return changes


def resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    """``schema`` with its local ``$ref`` followed (chains too) within ``root``."""
    seen: set[str] = set()
    while isinstance(schema, Mapping) and isinstance(schema.get("$ref"), str):
        ref = schema["$ref"]
        if not ref.startswith("#"):
            raise CatalogError(f"reference {ref[:120]!r} is not local (#/...): not compared")
        if ref in seen:
            raise CatalogError(f"reference {ref[:120]!r} refers to itself")
        seen.add(ref)
        target: Any = root
        for token in filter(None, ref[1:].split("/")):
            key = token.replace("~1", "/").replace("~0", "~")
            if isinstance(target, Mapping) and key in target:
                target = target[key]
            elif isinstance(target, list) and key.isdigit() and int(key) < len(target):
                target = target[int(key)]
            else:
                raise CatalogError(f"reference {ref[:120]!r} does not resolve")
        schema = target
    if not isinstance(schema, Mapping):
        raise CatalogError(f"a schema must be a JSON object, got {type(schema).__name__}")
    return schema


def _compare(old: _Side, new: _Side, where: str, out: list[Change], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise CatalogError(f"{where}: schemas nested deeper than {MAX_DEPTH} levels")
    o, n = resolve(old.schema, old.root), resolve(new.schema, new.root)
    old_types, new_types = _types(o, old.root), _types(n, new.root)
    if old_types != new_types:
        out.append(_type_change(where, old_types, new_types))
    _compare_enums(o, n, where, out)
    _compare_bounds(o, n, where, out)
    if "object" in old_types and "object" in new_types:
        _compare_objects(old, new, where, out, depth)
    old_items, new_items = o.get("items"), n.get("items")
    if isinstance(old_items, Mapping) and isinstance(new_items, Mapping):
        _compare(
            _Side(old_items, old.root), _Side(new_items, new.root), f"{where}[]", out, depth + 1
        )


def _types(schema: Mapping[str, Any], root: Mapping[str, Any], depth: int = 0) -> frozenset[str]:
    if depth > MAX_DEPTH:
        raise CatalogError(f"anyOf/oneOf nested deeper than {MAX_DEPTH} levels")
    values = _enum(schema)
    if values is not None:
        found = {_json_type(json.loads(v)) for v in values}
    elif isinstance(schema.get("type"), str):
        found = {schema["type"]}
    elif isinstance(schema.get("type"), list):
        found = {t for t in schema["type"] if isinstance(t, str)}
    elif isinstance(branches := schema.get("anyOf") or schema.get("oneOf"), list):
        found = set()
        for branch in branches:
            found |= _types(resolve(branch, root), root, depth + 1)
    else:
        return _ALL_TYPES
    if "number" in found:
        found.add("integer")  # every integer is a number
    return frozenset(found)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _spell(types: frozenset[str]) -> str:
    if types == _ALL_TYPES:
        return "any"
    shown = types - {"integer"} if "number" in types else types
    return "|".join(sorted(shown))


def _type_change(where: str, old: frozenset[str], new: frozenset[str]) -> Change:
    spelled = f"{_spell(old)} → {_spell(new)}"
    if new < old:
        return Change(
            where, "type_narrowed", (BREAKS_NEW,),
            f"type narrowed ({spelled}): events OLD sent may not fit NEW",
        )  # fmt: skip
    if new > old:
        return Change(
            where, "type_widened", (BREAKS_OLD,),
            f"type widened ({spelled}): NEW may send values consumers of OLD refuse",
        )  # fmt: skip
    return Change(where, "type_changed", _BOTH, f"type changed ({spelled})")


def _enum(schema: Mapping[str, Any]) -> frozenset[str] | None:
    """The allowed values (canonical JSON text), or None when any value is allowed."""
    if "const" in schema:
        return frozenset({json.dumps(schema["const"], sort_keys=True)})
    if isinstance(schema.get("enum"), list):
        return frozenset(json.dumps(v, sort_keys=True) for v in schema["enum"])
    return None


def _compare_enums(
    o: Mapping[str, Any], n: Mapping[str, Any], where: str, out: list[Change]
) -> None:
    old, new = _enum(o), _enum(n)
    if old == new:
        return
    if old is None:
        out.append(Change(where, "enum_narrowed", (BREAKS_NEW,),
                          f"values now limited to {_values(new)}"))  # fmt: skip
        return
    if new is None:
        out.append(Change(where, "enum_widened", (BREAKS_OLD,),
                          f"values no longer limited to {_values(old)}"))  # fmt: skip
        return
    if old - new:
        out.append(Change(where, "enum_narrowed", (BREAKS_NEW,),
                          f"value(s) removed: {_values(old - new)}"))  # fmt: skip
    if new - old:
        out.append(Change(where, "enum_widened", (BREAKS_OLD,),
                          f"value(s) added: {_values(new - old)}"))  # fmt: skip


def _values(values: frozenset[str] | None) -> str:
    return ", ".join(sorted(values or ()))


def _compare_bounds(
    o: Mapping[str, Any], n: Mapping[str, Any], where: str, out: list[Change]
) -> None:
    for lower, keys in ((True, _LOWER_BOUNDS), (False, _UPPER_BOUNDS)):
        for key in keys:
            old, new = _number(o.get(key)), _number(n.get(key))
            if old == new:
                continue
            tighter = (
                old is None
                or (new is not None and (new > old if lower else new < old))
            )  # fmt: skip
            shown = f"{key} {_bound(old)} → {_bound(new)}"
            if tighter:
                out.append(Change(where, "constraint_narrowed", (BREAKS_NEW,), shown))
            else:
                out.append(Change(where, "constraint_widened", (BREAKS_OLD,), shown))
    for key in _EXACT:
        if o.get(key) != n.get(key):
            out.append(Change(
                where, "constraint_changed", _BOTH, f"{key} {o.get(key)!r} → {n.get(key)!r}"
            ))  # fmt: skip


def _number(value: Any) -> float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _bound(value: float | None) -> str:
    return "none" if value is None else f"{value:g}"


def _required(schema: Mapping[str, Any]) -> frozenset[str]:
    required = schema.get("required")
    if not isinstance(required, list):
        return frozenset()
    return frozenset(name for name in required if isinstance(name, str))


def _properties(schema: Mapping[str, Any]) -> dict[str, Any]:
    properties = schema.get("properties")
    found = dict(properties) if isinstance(properties, Mapping) else {}
    for name in _required(schema):
        found.setdefault(name, {})
    return found


def _compare_objects(old: _Side, new: _Side, where: str, out: list[Change], depth: int) -> None:
    o, n = resolve(old.schema, old.root), resolve(new.schema, new.root)
    old_props, new_props = _properties(o), _properties(n)
    old_req, new_req = _required(o), _required(n)
    old_closed = o.get("additionalProperties") is False
    new_closed = n.get("additionalProperties") is False
    if new_closed and not old_closed:
        out.append(Change(where, "object_closed", (BREAKS_NEW,),
                          "unknown fields now refused (additionalProperties: false)"))  # fmt: skip
    if old_closed and not new_closed:
        out.append(Change(where, "object_opened", (BREAKS_OLD,),
                          "unknown fields now allowed: consumers of OLD refuse them"))  # fmt: skip
    for name in old_props:
        field = f"{where}.{name}"
        if name not in new_props:
            if name in old_req:
                out.append(Change(field, "field_removed", (BREAKS_OLD,),
                                  "required field removed: consumers of OLD need it"))  # fmt: skip
            else:
                breaks = (BREAKS_NEW,) if new_closed else ()
                out.append(Change(field, "field_removed", breaks, "optional field removed"))
            continue
        if name in new_req and name not in old_req and not _has_default(new_props[name], new):
            out.append(Change(field, "field_now_required", (BREAKS_NEW,),
                              "field became required: OLD did not always send it"))  # fmt: skip
        if name in old_req and name not in new_req:
            out.append(Change(field, "field_now_optional", (BREAKS_OLD,),
                              "field became optional: consumers of OLD require it"))  # fmt: skip
        _compare(_Side(old_props[name], old.root), _Side(new_props[name], new.root),
                 field, out, depth + 1)  # fmt: skip
    for name in new_props:
        if name in old_props:
            continue
        field = f"{where}.{name}"
        if name in new_req and not _has_default(new_props[name], new):
            out.append(Change(field, "required_field_added", (BREAKS_NEW,),
                              "new required field without default: OLD never sent it"))  # fmt: skip
        elif old_closed:
            out.append(Change(field, "field_added", (BREAKS_OLD,),
                              "new field, but OLD refuses unknown fields"))  # fmt: skip
        else:
            out.append(Change(field, "field_added", (), "new optional field"))


def _has_default(schema: Any, side: _Side) -> bool:
    return isinstance(schema, Mapping) and "default" in resolve(schema, side.root)
