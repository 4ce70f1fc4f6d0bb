"""Wire format of reconciliation requests (core NATS request/reply, JSON, versioned).

Every request is a JSON object ``{"v": 1, "op": ..., "resource": ...}`` of at most
:data:`MAX_REQUEST_BYTES`; every reply ``{"v": 1, "ok": true, ...}`` or
``{"v": 1, "ok": false, "error": "..."}``.  Lists are arrays, not objects, to keep
the bytes per range and per row small.

==========  =========================================  ===========================================
op          request                                    reply
==========  =========================================  ===========================================
digests     ``ranges``: hex prefixes (≤ MAX_RANGES)     ``ranges``: ``[[prefix, count, digest]]``
rows        ``ranges``: hex prefixes (≤ MAX_RANGES)     ``rows``: ``[[id, updated_at, origin,
                                                        digest]]`` (≤ MAX_ROWS, else an error)
reemit      ``ids``: UUIDs (≤ MAX_IDS)                  ``reemitted``: outbox rows written
==========  =========================================  ===========================================
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from bridge.errors import ReconcileError
from bridge.reconcile_digest import RangeDigest, RowDigest, check_prefix

PROTOCOL_VERSION = 1
OPS = ("digests", "rows", "reemit")
MAX_REQUEST_BYTES = 64 * 1024
MAX_RANGES = 256
MAX_IDS = 512
#: Rows one ``rows`` reply may carry (about 130 bytes each: well under NATS' 1 MB).
MAX_ROWS = 4096


@dataclass(frozen=True, slots=True)
class Request:
    op: str
    resource: str
    ranges: tuple[str, ...] = ()
    ids: tuple[str, ...] = ()

    def encode(self) -> bytes:
        body: dict[str, Any] = {"v": PROTOCOL_VERSION, "op": self.op, "resource": self.resource}
        if self.op == "reemit":
            body["ids"] = list(self.ids)
        else:
            body["ranges"] = list(self.ranges)
        return _dumps(body)


def decode_request(data: bytes) -> Request:
    """Parse and validate a request; :class:`ReconcileError` says what is wrong."""
    if len(data) > MAX_REQUEST_BYTES:
        raise ReconcileError(f"request of {len(data)} bytes exceeds {MAX_REQUEST_BYTES}")
    try:
        body = json.loads(data)
    except ValueError as exc:
        raise ReconcileError(f"request is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ReconcileError("request must be a JSON object")
    if body.get("v") != PROTOCOL_VERSION:
        raise ReconcileError(f"unsupported protocol version {body.get('v')!r}")
    op, resource = body.get("op"), body.get("resource")
    if op not in OPS:
        raise ReconcileError(f"unknown op {op!r}; expected one of {', '.join(OPS)}")
    if not isinstance(resource, str) or not resource:
        raise ReconcileError("resource must be a non-empty string")
    if op == "reemit":
        ids = body.get("ids")
        if not isinstance(ids, list) or len(ids) > MAX_IDS:
            raise ReconcileError(f"ids must be a list of at most {MAX_IDS} UUIDs")
        try:
            return Request(op, resource, ids=tuple(str(uuid.UUID(str(i))) for i in ids))
        except ValueError as exc:
            raise ReconcileError(f"ids: {exc}") from exc
    ranges = body.get("ranges")
    if not isinstance(ranges, list) or len(ranges) > MAX_RANGES:
        raise ReconcileError(f"ranges must be a list of at most {MAX_RANGES} hex prefixes")
    return Request(op, resource, ranges=tuple(check_prefix(r) for r in ranges))


def ok(**fields: Any) -> bytes:
    return _dumps({"v": PROTOCOL_VERSION, "ok": True, **fields})


def error(message: str) -> bytes:
    return _dumps({"v": PROTOCOL_VERSION, "ok": False, "error": message})


def encode_digests(digests: list[RangeDigest]) -> bytes:
    return ok(ranges=[[d.prefix, d.count, d.digest] for d in digests])


def encode_rows(rows: list[RowDigest]) -> bytes:
    return ok(rows=[[r.id, r.updated_at, r.origin, r.digest] for r in rows])


def decode_reply(data: bytes) -> dict[str, Any]:
    """The reply body; a refusal or a malformed reply raises :class:`ReconcileError`."""
    try:
        body = json.loads(data)
    except ValueError as exc:
        raise ReconcileError(f"peer reply is not JSON: {exc}") from exc
    if not isinstance(body, dict) or body.get("v") != PROTOCOL_VERSION:
        raise ReconcileError("peer reply has an unsupported protocol version")
    if body.get("ok") is not True:
        raise ReconcileError(f"peer refused: {body.get('error', 'no reason given')}")
    return body


def digests_of(body: dict[str, Any]) -> list[RangeDigest]:
    try:
        return [RangeDigest(str(p), int(n), str(d)) for p, n, d in body["ranges"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ReconcileError(f"malformed digests reply: {exc!r}") from exc


def rows_of(body: dict[str, Any]) -> list[RowDigest]:
    try:
        return [RowDigest(str(i), str(u), str(o), str(d)) for i, u, o, d in body["rows"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ReconcileError(f"malformed rows reply: {exc!r}") from exc


def _dumps(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()
