"""Wire format of reconciliation requests (core NATS request/reply, JSON, versioned).

Every request is a JSON object ``{"v": 2, "op": ..., "resource": ...}`` of at most
:data:`MAX_REQUEST_BYTES`; every reply ``{"v": 2, "ok": true, ...}`` or a refusal
``{"v": 2, "ok": false, "code": ..., "error": ..., "request_id": ...}``.  Lists are
arrays, not objects, to keep the bytes per range and per row small.  A *key* is an
array of the primary key's column values (a number or a string each,
:mod:`bridge.keys`); a *range* is ``[low, high]``, each a key or ``null``
(unbounded), holding the keys ``low < key <= high`` (:class:`~bridge.reconcile._digest.KeyRange`).

==========  ===========================================  =========================================
op          request                                      reply
==========  ===========================================  =========================================
digests     ``ranges`` (≤ MAX_RANGES)                    ``ranges``: ``[[count, digest]]`` in order
rows        ``ranges`` (≤ MAX_RANGES)                    ``rows``: ``[[key, updated_at, origin,
                                                         digest]]`` (≤ MAX_ROWS, else refused)
split       ``ranges`` (≤ MAX_SPLIT_RANGES)              ``splits``: ``[[key, ...]]``: per range,
                                                         the keys cutting it into ≤ 16 parts
reemit      ``keys`` (≤ MAX_IDS)                         ``reemitted``: outbox rows written
==========  ===========================================  =========================================

Requests come from anyone who may publish on the subject, so :func:`decode_request`
checks the shape before any work: the size; JSON that nests deeper than the format;
exactly the fields of the op, each of its type; ``v`` the integer 2; ``resource`` at
most :data:`MAX_RESOURCE_LEN` characters; at most the op's number of ranges or keys;
each key an array of 1 to :data:`~bridge.keys.MAX_KEY_PARTS` numbers (64-bit integers)
or strings (at most :data:`~bridge.keys.MAX_TEXT_CHARS` characters).  The responder
then checks the keys against the resource's key (arity, kind, range of the column's
type, canonical UUIDs) and the ranges against each other (none empty or
overlapping, so one request reads each row at most once), and refuses a reply larger
than :data:`MAX_REPLY_BYTES`.  A refusal names one of :data:`REFUSALS` and its fixed
message — never the request's content or an exception's text (those go to the
responder's log, under ``request_id``).

Replies are checked as strictly by the requester (:func:`digests_of`, :func:`rows_of`,
:func:`splits_of`): a peer's keys are parsed as this app's keys, its split keys must
lie inside the range asked, ascending.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bridge.errors import ReconcileError, ReconcileRefusedError
from bridge.keys import MAX_KEY_PARTS, MAX_TEXT_CHARS, Key
from bridge.reconcile._digest import FANOUT, KeyRange, ModelDigests, RangeDigest, RowDigest

PROTOCOL_VERSION = 2
OPS = ("digests", "rows", "split", "reemit")
MAX_REQUEST_BYTES = 64 * 1024
MAX_RANGES = 256
#: Ranges one ``split`` request may ask to cut (its reply holds 15 keys per range).
MAX_SPLIT_RANGES = 32
MAX_IDS = 512
#: Rows one ``rows`` reply may carry (about 130 bytes each with a UUID key).
MAX_ROWS = 4096
#: A reply larger than this is refused ``too_large`` (NATS' default limit is 1 MB).
MAX_REPLY_BYTES = 900 * 1024
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
_FIELDS = {"digests": "ranges", "rows": "ranges", "split": "ranges", "reemit": "keys"}
_LIMITS = {"digests": MAX_RANGES, "rows": MAX_RANGES, "split": MAX_SPLIT_RANGES, "reemit": MAX_IDS}
_REQUEST_ID = re.compile(r"^[0-9a-f]{1,32}$")
_INT64 = 1 << 63


@dataclass(frozen=True, slots=True)
class Request:
    op: str
    resource: str
    ranges: tuple[KeyRange, ...] = ()
    keys: tuple[Key, ...] = ()

    def encode(self) -> bytes:
        body: dict[str, Any] = {"v": PROTOCOL_VERSION, "op": self.op, "resource": self.resource}
        if self.op == "reemit":
            body["keys"] = [list(k) for k in self.keys]
        else:
            body["ranges"] = [r.to_json() for r in self.ranges]
        return _dumps(body)


def decode_request(data: bytes) -> Request:
    """Parse a request and check its shape (module doc); :class:`ReconcileRefusedError`
    with ``code`` ``bad_request`` or ``too_large`` and the detail as its message if it fails."""
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
    field = _FIELDS[op]
    if set(body) != {"v", "op", "resource", field}:
        raise _refused("bad_request", f"{op} takes exactly v, op, resource, {field}")
    if not isinstance(resource, str) or not 0 < len(resource) <= MAX_RESOURCE_LEN:
        raise _refused("bad_request", f"resource must be 1-{MAX_RESOURCE_LEN} characters")
    items = body[field]
    if not isinstance(items, list):
        raise _refused("bad_request", f"{field} must be a list")
    if len(items) > _LIMITS[op]:
        raise _refused("too_large", f"{len(items)} {field}; at most {_LIMITS[op]}")
    try:
        if op == "reemit":
            return Request(op, resource, keys=tuple(dict.fromkeys(_key(k) for k in items)))
        return Request(op, resource, ranges=tuple(_range(r) for r in items))
    except ValueError as exc:
        raise _refused("bad_request", f"{field}: {exc}") from exc


def _key(value: Any) -> Key:
    if not isinstance(value, list) or not 0 < len(value) <= MAX_KEY_PARTS:
        raise ValueError(f"a key is an array of 1 to {MAX_KEY_PARTS} values")
    for part in value:
        if isinstance(part, str):
            if len(part) > MAX_TEXT_CHARS:
                raise ValueError(f"a key part is at most {MAX_TEXT_CHARS} characters")
        elif type(part) is not int or not -_INT64 <= part < _INT64:
            raise ValueError("a key part is a string or a 64-bit integer")
    return tuple(value)


def _range(value: Any) -> KeyRange:
    if not isinstance(value, list) or len(value) != 2:
        raise ValueError("a range is [low, high]")
    low, high = value
    return KeyRange(None if low is None else _key(low), None if high is None else _key(high))


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
    return ok(ranges=[[d.count, d.digest] for d in digests])


def encode_rows(rows: list[RowDigest]) -> bytes:
    return ok(rows=[[list(r.key), r.updated_at, r.origin, r.digest] for r in rows])


def encode_splits(splits: list[list[Key]]) -> bytes:
    return ok(splits=[[list(key) for key in keys] for keys in splits])


def decode_reply(data: bytes) -> dict[str, Any]:
    """The reply body; a refusal or a malformed reply raises :class:`ReconcileError`."""
    try:
        body = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ReconcileError(f"peer reply is not JSON: {type(exc).__name__}") from exc
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


def digests_of(body: dict[str, Any], ranges: Sequence[KeyRange]) -> list[RangeDigest]:
    """The peer's digests of ``ranges`` (the ranges asked, in order)."""
    try:
        found = body["ranges"]
        if not isinstance(found, list) or len(found) != len(ranges):
            raise ValueError(f"{len(ranges)} ranges asked")
        result = []
        for r, (n, d) in zip(ranges, found, strict=True):
            if type(n) is not int or n < 0 or not isinstance(d, str):
                raise ValueError("a digest is [count, digest]")
            result.append(RangeDigest(r, n, d))
        return result
    except (KeyError, TypeError, ValueError) as exc:
        raise ReconcileError(f"malformed digests reply: {exc}") from exc


def rows_of(body: dict[str, Any], model: ModelDigests) -> list[RowDigest]:
    """The peer's rows, their keys parsed as ``model``'s keys."""
    try:
        return [
            RowDigest(model.parse_key(k), _str(u), _str(o), _str(d)) for k, u, o, d in body["rows"]
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise ReconcileError(f"malformed rows reply: {exc}") from exc


def splits_of(
    body: dict[str, Any], model: ModelDigests, ranges: Sequence[KeyRange]
) -> list[list[Key]]:
    """The peer's split keys of ``ranges``: ``model``'s keys, ascending, inside each range."""
    try:
        found = body["splits"]
        if not isinstance(found, list) or len(found) != len(ranges):
            raise ValueError(f"{len(ranges)} ranges asked")
        result = []
        for r, keys in zip(ranges, found, strict=True):
            if not isinstance(keys, list) or len(keys) >= FANOUT:
                raise ValueError(f"at most {FANOUT - 1} split keys per range")
            parsed = [model.parse_key(k) for k in keys]
            model.parse_ranges(r.children(parsed))  # inside, ascending: no empty child
            result.append(parsed)
        return result
    except (KeyError, TypeError, ValueError) as exc:
        raise ReconcileError(f"malformed split reply: {exc}") from exc


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def _refused(code: str, detail: str) -> ReconcileRefusedError:
    return ReconcileRefusedError(detail, code=code)


def _dumps(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
