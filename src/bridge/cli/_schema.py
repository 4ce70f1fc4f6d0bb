"""``bridge schema diff OLD NEW``: is NEW's event catalog (or payload JSON Schema)
compatible with OLD's? (:mod:`bridge.catalog.diff`, rules in :mod:`bridge.catalog.compat`.)

    bridge schema diff docs/asyncapi/system_a.json new/system_a.json
    bridge schema diff --json old_payload.schema.json new_payload.schema.json

OLD and NEW are files: two catalogs (``/asyncapi.json`` of a service, or
``bridge.catalog.asyncapi`` written to a file) or two JSON Schemas.  Every change is
listed with whom it breaks; ``--json`` prints the report as one document.

Exit codes: 0 compatible; :data:`EXIT_INCOMPATIBLE` (4) at least one change breaks
consumers; 2 usage (arguments, a file that cannot be read, is not JSON, or a catalog
compared with a schema).  Needs no environment, NATS or database.
"""

from __future__ import annotations

import argparse
from typing import Any

from bridge.catalog.compat import BREAKS_NEW, BREAKS_OLD
from bridge.catalog.diff import Report, compare, read_document
from bridge.cli._context import Output
from bridge.cli._options import EXIT_INCOMPATIBLE, EXIT_OK, EXIT_USAGE
from bridge.errors import CatalogError

_WHO = {BREAKS_OLD: "consumers of OLD", BREAKS_NEW: "consumers of NEW"}


def add_schema_parser(sub: Any) -> argparse.ArgumentParser:
    """The ``schema`` sub-command's arguments (``sub``: the parser's subparsers)."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "schema", help="event catalogs and payload schemas: diff OLD NEW"
    )
    parser.add_argument("action", choices=["diff"])
    parser.add_argument("old", metavar="OLD", help="the catalog or JSON Schema in use")
    parser.add_argument("new", metavar="NEW", help="the one about to be released")
    return parser


def cmd_schema(args: argparse.Namespace, out: Output) -> int:
    """Run ``bridge schema diff`` (module doc); returns the exit code."""
    try:
        report = compare(read_document(args.old), read_document(args.new))
    except CatalogError as exc:
        out.err.write(f"bridge schema diff: {exc}\n")
        return EXIT_USAGE
    if out.json_mode:
        out.emit(report.to_dict())
    else:
        if report.changes:
            out.emit(None, _table(report))
        out.out.write(_verdict(report) + "\n")
    return EXIT_OK if report.compatible else EXIT_INCOMPATIBLE


def _table(report: Report) -> list[list[str]]:
    rows = [["", "where", "rule", "breaks", "detail"]]
    for change in report.changes:
        rows.append([
            "ok" if change.compatible else "BREAKS",
            change.where,
            change.rule,
            ", ".join(_WHO[who] for who in change.breaks) or "-",
            change.detail,
        ])  # fmt: skip
    return rows


def _verdict(report: Report) -> str:
    broken = sum(not change.compatible for change in report.changes)
    if broken:
        return f"incompatible: {broken} of {len(report.changes)} change(s) break consumers"
    return f"compatible ({len(report.changes) or 'no'} change(s))"
