"""bridge.catalog.diff and ``bridge schema diff``: catalogs compared version by version
(new versions, dropped ones, a publish version old consumers do not know, payloads
changed in place), the exit codes, --json, and files that are not what they claim."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from bridge import Envelope, EventSchemas, configure_bidirectional
from bridge.catalog import asyncapi
from bridge.catalog import diff as catalog_diff
from bridge.catalog.compat import BREAKS_NEW, BREAKS_OLD
from bridge.catalog.diff import compare, read_document
from bridge.cli import EXIT_INCOMPATIBLE, EXIT_OK, EXIT_USAGE, main_async
from bridge.errors import CatalogError
from services.shared.event_versions import PayloadModel, event_schemas

CONFIG = configure_bidirectional(app_name="system_a", destination_app="system_b")


class UserV3(BaseModel):
    id: str
    email: str
    tier: str = "free"


class UserV2Renamed(BaseModel):  # v2 changed in place: "email" dropped
    id: str
    name: str


def to_v3(payload: Mapping[str, Any], envelope: Envelope) -> Mapping[str, Any]:
    return payload


def catalog(schemas: EventSchemas) -> dict[str, Any]:
    return asyncapi(CONFIG, schemas)


def with_user_v3(*, publish: int | None = None) -> EventSchemas:
    schemas = event_schemas()
    model = PayloadModel(UserV3)
    schemas.version("user", 3, model, json_schema=model.json_schema())
    schemas.upcaster("user", 2, to_v3)
    if publish is not None:
        schemas.publish_version("user", publish)
    return schemas


def rules(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(c.where, c.rule, c.breaks) for c in compare(old, new).changes]


def test_the_same_catalog_is_compatible_with_no_change() -> None:
    report = compare(catalog(event_schemas()), catalog(event_schemas()))
    assert report.compatible and report.changes == () and report.kind == "catalog"


def test_publishing_a_version_old_consumers_do_not_know_breaks_them_until_pinned() -> None:
    old = catalog(event_schemas())
    assert rules(old, catalog(with_user_v3())) == [
        ("user", "publish_version_unknown", (BREAKS_OLD,)),
        ("user v3", "version_added", ()),
    ]
    pinned = compare(old, catalog(with_user_v3(publish=2)))
    assert pinned.compatible
    assert [c.rule for c in pinned.changes] == ["version_added"]


def redeclared(*, without: tuple[str, int]) -> EventSchemas:
    """The services' declarations, minus one type's version."""
    schemas = EventSchemas()
    for item in event_schemas().declarations():
        kept = [v for v in item.versions if (item.type_, v) != without]
        for version in kept:
            schemas.version(item.type_, version, dict, json_schema=item.json_schemas[version])
        for version in kept[:-1]:
            schemas.upcaster(item.type_, version, to_v3)
    return schemas


def test_dropping_an_accepted_version_breaks_new_consumers_reading_old_events() -> None:
    old = catalog(event_schemas())
    assert rules(old, catalog(redeclared(without=("user", 1)))) == [
        ("user v1", "version_dropped", (BREAKS_NEW,)),
    ]
    assert compare(old, catalog(redeclared(without=("nothing", 0)))).changes == ()


def test_a_payload_changed_in_place_is_compared_field_by_field() -> None:
    schemas = EventSchemas()
    schemas.version("user", 1, dict, json_schema=UserV3.model_json_schema())
    changed = EventSchemas()
    changed.version("user", 1, dict, json_schema=UserV2Renamed.model_json_schema())
    found = rules(catalog(schemas), catalog(changed))
    assert ("user v1: payload.email", "field_removed", (BREAKS_OLD,)) in found
    assert ("user v1: payload.name", "required_field_added", (BREAKS_NEW,)) in found
    assert ("user v1: payload.tier", "field_removed", ()) in found


def test_types_added_removed_and_versions_without_schema() -> None:
    bare = EventSchemas()
    bare.version("organization", 1, dict)
    bare.version("widget", 1, dict)
    described = EventSchemas()
    described.version("organization", 1, dict, json_schema={"type": "object"})
    described.version("gadget", 1, dict)
    assert rules(catalog(bare), catalog(described)) == [
        ("gadget", "type_added", ()),
        ("organization v1: payload", "schema_not_compared", ()),
        ("widget", "type_removed", (BREAKS_OLD,)),
    ]


def test_two_payload_schemas_are_compared_directly_but_not_with_a_catalog() -> None:
    old, new = UserV3.model_json_schema(), UserV2Renamed.model_json_schema()
    report = compare(old, new)
    assert report.kind == "schema" and not report.compatible
    with pytest.raises(CatalogError, match="OLD is a catalog and NEW a schema"):
        compare(catalog(event_schemas()), old)


def test_a_catalog_without_messages_is_an_error() -> None:
    broken = catalog(event_schemas())
    del broken["components"]["messages"]
    with pytest.raises(CatalogError, match=r"no components\.messages"):
        compare(broken, catalog(event_schemas()))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\xfe{}", "not UTF-8"),
        (b"{not json", "not JSON"),
        (b"[1, 2]", "is a JSON object"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
        (b'{"a": NaN_}', "not JSON"),
    ],
    ids=["binary", "malformed", "array", "deep", "garbage"],
)
def test_files_that_are_not_a_json_object_are_refused_in_one_line(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "doc.json"
    path.write_bytes(content)
    with pytest.raises(CatalogError, match=message):
        read_document(path)


def test_an_oversized_file_is_refused_before_it_is_parsed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(catalog_diff, "MAX_DOCUMENT_BYTES", 100)
    path = tmp_path / "big.json"
    path.write_text(json.dumps({"pad": "x" * 200}), encoding="utf-8")
    with pytest.raises(CatalogError, match="larger than 100 bytes"):
        read_document(path)


async def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = await main_async(list(argv), env={}, out=out, err=err)  # no environment needed
    return code, out.getvalue(), err.getvalue()


def write(path: Path, document: dict[str, Any]) -> str:
    path.write_text(json.dumps(document), encoding="utf-8")
    return str(path)


async def test_the_cli_exit_codes_and_its_json_report(tmp_path: Path) -> None:
    old = write(tmp_path / "old.json", catalog(event_schemas()))
    new = write(tmp_path / "new.json", catalog(with_user_v3()))
    pinned = write(tmp_path / "pinned.json", catalog(with_user_v3(publish=2)))

    code, out, err = await run("schema", "diff", old, new)
    assert code == EXIT_INCOMPATIBLE == 4 and err == ""
    assert "publish_version_unknown" in out and "consumers of OLD" in out
    assert out.splitlines()[-1] == "incompatible: 1 of 2 change(s) break consumers"

    code, out, _ = await run("schema", "diff", "--json", old, pinned)
    assert code == EXIT_OK
    report = json.loads(out)
    assert report["compatible"] is True and report["incompatible_changes"] == 0
    assert report["changes"] == [{
        "where": "user v3", "rule": "version_added", "compatible": True, "breaks": [],
        "detail": "new version",
    }]  # fmt: skip

    code, out, _ = await run("--json", "schema", "diff", old, new)  # --json before the command
    assert code == EXIT_INCOMPATIBLE and json.loads(out)["compatible"] is False


async def test_the_cli_usage_errors(tmp_path: Path) -> None:
    old = write(tmp_path / "old.json", catalog(event_schemas()))
    schema = write(tmp_path / "schema.json", UserV3.model_json_schema())
    code, _, err = await run("schema", "diff", old, str(tmp_path / "missing.json"))
    assert code == EXIT_USAGE and "missing.json: cannot read" in err and len(err.splitlines()) == 1
    code, _, err = await run("schema", "diff", old, schema)
    assert code == EXIT_USAGE and "compare two catalogs or two schemas" in err
    code, _, _ = await run("schema", "diff", old)
    assert code == EXIT_USAGE
    code, _, _ = await run("schema", "merge", old, old)
    assert code == EXIT_USAGE
