"""Wire format of reconciliation requests (core NATS request/reply, JSON, versioned).

Every request is a JSON object ``{"v": 1, "op": ..., "resource": ...}`` of at most
:data:`MAX_REQUEST_BYTES`; every reply ``{"v": 1, "ok": true, ...}`` or a refusal
``{"v": 1, "ok": false, "code": ..., "error": ..., "request_id": ...}``.  Lists are
arrays, not objects, to keep the bytes per range and per row small.

==========  =========================================  ===========================================
op          request                                    reply
==========  =========================================  ===========================================
digests     ``ranges``: hex prefixes (≤ MAX_RANGES)     ``ranges``: ``[[prefix, count, digest]]``
rows        ``ranges``: hex prefixes (≤ MAX_RANGES)     ``rows``: ``[[id, updated_at, origin,
                                                        digest]]`` (≤ MAX_ROWS, else an error)
reemit      ``ids``: UUIDs (≤ MAX_IDS)                  ``reemitted``: outbox rows written
==========  =========================================  ===========================================

Requests come from anyone who may publish on the subject, so :func:`decode_request`
checks everything before any work: the size; JSON that nests deeper than the format
(the format is an object of flat lists); exactly the fields of the op, each of its
type; ``v`` the integer 1; ``resource`` at most :data:`MAX_RESOURCE_LEN` characters;
at most :data:`MAX_RANGES` ranges, none repeated or inside another (so one request
reads each row at most once); at most :data:`MAX_IDS` UUIDs.  A refusal names one of
:data:`REFUSALS` and its fixed message — never the request's content or an
exception's text (those go to the responder's log, under ``request_id``).
"""

from __future__ import annotations

import itertools
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from bridge.errors import ReconcileError, ReconcileRefusedError
from bridge.reconcile._digest import RangeDigest, RowDigest, check_prefix

PROTOCOL_VERSION = 1
OPS = ("digests", "rows", "reemit")
MAX_REQUEST_BYTES = 64 * 1024
MAX_RANGES = 256
MAX_IDS = 512
#: Rows one ``rows`` reply may carry (about 130 bytes each: well under NATS' 1 MB).
MAX_ROWS = 4096
MAX_RESOURCE_LEN = 64
#: Refusal codes and the only text a refusal carries.
REFUSALS = {
    "bad_request": "malformed or invalid request",
    "too_large": "request exceeds a limit; ask for less",
    "unknown_resource": "resource not reconciled here",
    "busy": "too many requests in progress; retry later",
    "timeout": "request took too long",
    "internal": "request failed",
}
_FIELDS = {"digests": "ranges", "rows": "ranges", "reemit": "ids"}
_REQUEST_ID = re.compile(r"^[0-9a-f]{1,32}$")


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
    """Parse and validate a request (module doc); :class:`ReconcileRefusedError` with
    ``code`` ``bad_request`` or ``too_large`` and the detail as its message if it fails."""
    if len(data) > MAX_REQUEST_BYTES:
        raise _refused("too_large", f"request of {len(data)} bytes exceeds {MAX_REQUEST_BYTES}")
    try:
        body = json.loads(data)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        raise _refused("bad_request", f"request is not JSON: {type(exc).__name__}") from exc
    if not isinstance(body, dict):
        raise _refused("bad_request", "request must be a JSON object")
    version, op, resource = body.get("v"), body.get("op"), body.get("resource")
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise _refused("bad_request", "unsupported protocol version")
    if not isinstance(op, str) or op not in OPS:
        raise _refused("bad_request", f"unknown op; expected one of {', '.join(OPS)}")
    if set(body) != {"v", "op", "resource", _FIELDS[op]}:
        raise _refused("bad_request", f"{op} takes exactly v, op, resource, {_FIELDS[op]}")
    if not isinstance(resource, str) or not 0 < len(resource) <= MAX_RESOURCE_LEN:
        raise _refused("bad_request", f"resource must be 1-{MAX_RESOURCE_LEN} characters")
    items = body[_FIELDS[op]]
    limit = MAX_IDS if op == "reemit" else MAX_RANGES
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise _refused("bad_request", f"{_FIELDS[op]} must be a list of strings")
    if len(items) > limit:
        raise _refused("too_large", f"{len(items)} {_FIELDS[op]}; at most {limit}")
    if op == "reemit":
        try:  # the longest form uuid.UUID reads is "urn:uuid:" + 36 characters
            ids = tuple(dict.fromkeys(str(uuid.UUID(i if len(i) <= 45 else "")) for i in items))
        except ValueError as exc:
            raise _refused("bad_request", f"ids: {exc}") from exc
        return Request(op, resource, ids=ids)
    try:
        ranges = tuple(check_prefix(r) for r in items)
    except ReconcileError as exc:
        raise _refused("bad_request", str(exc)) from exc
    ordered = sorted(ranges)
    for first, second in itertools.pairwise(ordered):
        if second.startswith(first):  # sorted: a range inside another follows it
            raise _refused("bad_request", f"ranges {first!r} and {second!r} overlap")
    return Request(op, resource, ranges=ranges)


def ok(**fields: Any) -> bytes:
    return _dumps({"v": PROTOCOL_VERSION, "ok": True, **fields})


def refusal(code: str, request_id: str) -> bytes:
    """The reply refusing a request: ``code`` (a key of :data:`REFUSALS`), its fixed
    message and the id under which the responder logged the details."""
    return _dumps(
        {
            "v": PROTOCOL_VERSION,
            "ok": False,
            "code": code,
            "error": REFUSALS[code],
            "request_id": request_id,
        }
    )


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
        # Only the code and the id are taken from the peer, both checked: its text
        # would end up in this app's logs and runs table.
        code = body.get("code")
        code = code if isinstance(code, str) and code in REFUSALS else "internal"
        rid = body.get("request_id")
        rid = rid if isinstance(rid, str) and _REQUEST_ID.match(rid) else None
        raise ReconcileRefusedError(
            f"peer refused the request: {code} ({REFUSALS[code]}); request id {rid}",
            code=code,
            request_id=rid,
        )
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


def _refused(code: str, detail: str) -> ReconcileRefusedError:
    return ReconcileRefusedError(detail, code=code)


def _dumps(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()
