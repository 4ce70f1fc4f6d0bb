"""Compare two event catalogs (or two payload JSON Schemas): is NEW compatible for the
consumers of OLD, and for NEW's consumers reading what OLD sent?

Two catalogs (:func:`bridge.catalog.asyncapi` documents) are compared type by type,
using the messages' ``x-bridge-*`` extensions:

- a version both declare: its payload schemas by the rules of
  :mod:`bridge.catalog.compat`;
- the version NEW publishes is not one OLD accepts → ``publish_version_unknown``
  (breaks consumers of OLD: they dead-letter it as ``unsupported_schema_version``;
  pin :meth:`~bridge.event_schemas.EventSchemas.publish_version` until all consumers
  run NEW);
- a version OLD accepts that NEW does not → ``version_dropped`` (breaks consumers of
  NEW: events of it in flight or in the DLQ are dead-lettered);
- a version added → ``version_added`` (compatible; an upcaster covers it);
- a type OLD declares and NEW does not → ``type_removed`` (breaks consumers of OLD:
  NEW stamps it ``schema_version`` 1 and validates nothing); a type added →
  ``type_added`` (compatible);
- a version without a JSON Schema on either side → ``schema_not_compared``
  (compatible, but nothing was checked: say so).

Two JSON Schemas (any JSON object without an ``asyncapi`` field) are compared
directly.  Mixing the two kinds is a :class:`~bridge.errors.CatalogError`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.catalog.compat import BREAKS_NEW, BREAKS_OLD, Change, compare_schemas, resolve
from bridge.catalog.document import X_NO_SCHEMA, X_PUBLISHED, X_SCHEMA_VERSION, X_TYPE
from bridge.errors import CatalogError

__all__ = ["MAX_DOCUMENT_BYTES", "Report", "compare", "read_document"]

#: A larger file is refused before it is parsed.
MAX_DOCUMENT_BYTES = 32 * 1024 * 1024
KIND_CATALOG = "catalog"
KIND_SCHEMA = "schema"


@dataclass(frozen=True, slots=True)
class Report:
    """The changes from OLD to NEW; ``compatible`` when none breaks a consumer."""

    kind: str
    changes: tuple[Change, ...]

    @property
    def compatible(self) -> bool:
        return all(change.compatible for change in self.changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "compatible": self.compatible,
            "incompatible_changes": sum(not c.compatible for c in self.changes),
            "changes": [change.to_dict() for change in self.changes],
        }


def read_document(path: str | Path) -> dict[str, Any]:
    """The JSON object in ``path``; :class:`~bridge.errors.CatalogError` saying why not."""
    source = Path(path)
    try:
        with source.open("rb") as file:
            data = file.read(MAX_DOCUMENT_BYTES + 1)
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if len(data) > MAX_DOCUMENT_BYTES:
        raise CatalogError(f"{path}: larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        document = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise CatalogError(f"{path}: not UTF-8 text") from exc
    except (ValueError, RecursionError) as exc:
        raise CatalogError(f"{path}: not JSON: {str(exc)[:200]}") from exc
    if not isinstance(document, dict):
        raise CatalogError(f"{path}: a catalog or JSON Schema is a JSON object")
    return document


def compare(old: Mapping[str, Any], new: Mapping[str, Any]) -> Report:
    """The :class:`Report` from ``old`` to ``new`` (module doc)."""
    old_kind, new_kind = _kind(old), _kind(new)
    if old_kind != new_kind:
        raise CatalogError(
            f"OLD is a {old_kind} and NEW a {new_kind}: compare two catalogs or two schemas"
        )
    if old_kind == KIND_SCHEMA:
        return Report(KIND_SCHEMA, tuple(compare_schemas(old, new)))
    return Report(KIND_CATALOG, tuple(_compare_catalogs(old, new)))


def _kind(document: Mapping[str, Any]) -> str:
    return KIND_CATALOG if "asyncapi" in document else KIND_SCHEMA


@dataclass(frozen=True, slots=True)
class _Type:
    """One declared type of a catalog: its versions' payload schemas (None: undeclared)."""

    schemas: dict[int, Mapping[str, Any] | None]
    published: int | None


def _declared(document: Mapping[str, Any]) -> dict[str, _Type]:
    components = document.get("components")
    messages = components.get("messages") if isinstance(components, Mapping) else None
    if not isinstance(messages, Mapping):
        raise CatalogError("the catalog has no components.messages")
    found: dict[str, _Type] = {}
    for key, raw in messages.items():
        message = resolve(raw, document)
        type_, version = message.get(X_TYPE), message.get(X_SCHEMA_VERSION)
        if not isinstance(type_, str) or not isinstance(version, int):
            continue  # not an event of a declared type (the dead letter)
        envelope = resolve(message.get("payload") or {}, document)
        properties = envelope.get("properties")
        payload = properties.get("payload") if isinstance(properties, Mapping) else None
        if not isinstance(payload, Mapping):
            raise CatalogError(f"message {key!r} has no payload.properties.payload schema")
        item = found.setdefault(type_, _Type({}, None))
        item.schemas[version] = None if resolve(payload, document).get(X_NO_SCHEMA) else payload
        if message.get(X_PUBLISHED) is True:
            found[type_] = _Type(item.schemas, version)
    return found


def _compare_catalogs(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Change]:
    old_types, new_types = _declared(old), _declared(new)
    changes: list[Change] = []
    for type_ in sorted(old_types.keys() | new_types.keys()):
        before, after = old_types.get(type_), new_types.get(type_)
        if after is None:
            changes.append(Change(type_, "type_removed", (BREAKS_OLD,),
                                  "no longer declared: NEW stamps it schema_version 1 and "
                                  "validates nothing"))  # fmt: skip
            continue
        if before is None:
            changes.append(Change(type_, "type_added", (), "new declared type"))
            continue
        changes.extend(_compare_versions(type_, before, after, old, new))
    return changes


def _compare_versions(
    type_: str, before: _Type, after: _Type, old: Mapping[str, Any], new: Mapping[str, Any]
) -> list[Change]:
    changes: list[Change] = []
    known = sorted(before.schemas)
    if after.published is not None and after.published not in before.schemas:
        changes.append(Change(
            type_, "publish_version_unknown", (BREAKS_OLD,),
            f"NEW publishes v{after.published}, which consumers of OLD (v{known[0]}..v"
            f"{known[-1]}) dead-letter as unsupported_schema_version: pin "
            f"publish_version({type_!r}, {known[-1]}) until every consumer runs NEW",
        ))  # fmt: skip
    for version in sorted(before.schemas.keys() - after.schemas.keys()):
        changes.append(Change(
            f"{type_} v{version}", "version_dropped", (BREAKS_NEW,),
            f"NEW no longer accepts v{version}: such events still in flight or in the "
            "dead-letter queue are dead-lettered",
        ))  # fmt: skip
    for version in sorted(after.schemas.keys() - before.schemas.keys()):
        changes.append(Change(f"{type_} v{version}", "version_added", (), "new version"))
    for version in sorted(before.schemas.keys() & after.schemas.keys()):
        where = f"{type_} v{version}: payload"
        old_schema, new_schema = before.schemas[version], after.schemas[version]
        if old_schema is None or new_schema is None:
            changes.append(Change(where, "schema_not_compared", (),
                                  "no JSON Schema declared on one side: not compared"))  # fmt: skip
            continue
        changes.extend(
            compare_schemas(old_schema, new_schema, where=where, old_root=old, new_root=new)
        )
    return changes
