"""Checking catalogs: the official AsyncAPI 3.0.0 JSON Schema (vendored, see
tests/fixtures/asyncapi/SOURCE.md) and validation of an instance against a part of a
document, its ``$ref``s resolved within the document."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "asyncapi"
ASYNCAPI_SCHEMA = FIXTURES / "asyncapi-3.0.0.schema.json"
DOCUMENT_URI = "urn:catalog-under-test"


@cache
def asyncapi_validator() -> Draft7Validator:
    """A validator of AsyncAPI 3.0.0 documents (the schema is draft 7, self-contained:
    every definition it refers to is bundled in it, the draft-07 meta-schema too)."""
    schema = json.loads(ASYNCAPI_SCHEMA.read_text(encoding="utf-8"))
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


def asyncapi_errors(document: dict[str, Any]) -> list[str]:
    """Why ``document`` is not a valid AsyncAPI 3.0.0 document (empty when it is)."""
    return [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message[:200]}"
        for error in asyncapi_validator().iter_errors(document)
    ]


def part_validator(document: dict[str, Any], pointer: str) -> Draft7Validator:
    """A validator of the schema at ``pointer`` (``/components/messages/x/payload``),
    resolving ``#/...`` references against the whole ``document``."""
    registry: Registry[Any] = Registry().with_resource(
        DOCUMENT_URI, Resource(contents=document, specification=DRAFT7)
    )
    return Draft7Validator({"$ref": f"{DOCUMENT_URI}#{pointer}"}, registry=registry)
