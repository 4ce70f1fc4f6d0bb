#!/usr/bin/env python3
"""Write the example services' event catalogs: docs/asyncapi/system_a.json and system_b.json.

    python scripts/write_asyncapi.py           # rewrite both documents
    python scripts/write_asyncapi.py --check   # exit 1 (naming the file) if one is stale

Each document is what the service serves at ``/asyncapi.json`` with the default
environment: :func:`bridge.catalog.asyncapi` of the config ``config_from_env`` builds
for the pair and the domain's declared event versions
(``services.shared.event_versions``).  ``tests/unit/test_catalog_documents.py`` fails
when a committed document differs from what this script writes.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a file from a checkout
    sys.path.insert(0, str(ROOT))

from bridge import config_from_env  # noqa: E402
from bridge.catalog import asyncapi  # noqa: E402
from services.shared.event_versions import event_schemas  # noqa: E402

OUT = ROOT / "docs" / "asyncapi"
PAIRS = (("system_a", "system_b"), ("system_b", "system_a"))


def documents() -> dict[str, str]:
    """File name → JSON text of each service's catalog (default environment)."""
    return {
        f"{app}.json": render(
            asyncapi(config_from_env({}, app_name=app, destination_app=peer), event_schemas())
        )
        for app, peer in PAIRS
    }


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report stale documents")
    parser.add_argument("--out", type=Path, default=OUT, help="directory (docs/asyncapi)")
    args = parser.parse_args(argv)
    stale = []
    for name, text in documents().items():
        path = args.out / name
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    for path in stale:
        print(f"{'stale' if args.check else 'wrote'}: {path}", file=sys.stderr)
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
