"""Pure parts of reconciliation: key ranges, narrowing, the repair rule, the protocol."""

from __future__ import annotations

import json

import pytest

from bridge.errors import ReconcileError, ReconcileRefusedError
from bridge.reconcile import _protocol as proto
from bridge.reconcile._digest import KeyRange, RangeDigest, RowDigest, check_ranges
from bridge.reconcile.repair import Split, decide, narrow

T1 = "2026-01-01T00:00:00.000001Z"
T2 = "2026-01-01T00:00:00.000002Z"


def K(*parts: int | str) -> tuple[int | str, ...]:
    return parts


def R(low: int | None, high: int | None) -> KeyRange:
    return KeyRange(None if low is None else (low,), None if high is None else (high,))


def test_ranges_are_checked_in_the_order_postgresql_uses_with_collate_c() -> None:
    check_ranges([R(None, 5), R(5, 9), R(9, None)])  # adjacent: fine
    for bad in ([R(None, 5), R(4, None)], [R(None, None), R(1, 2)], [R(3, 3)], [R(4, 3)],
                [R(None, 1), R(None, 2)]):  # fmt: skip
        with pytest.raises(ValueError):
            check_ranges(bad)
    # Text compares by code point (= UTF-8 bytes = COLLATE "C"): "Z" < "a" < "é" < "😀".
    check_ranges([KeyRange(None, ("Z",)), KeyRange(("Z",), ("a",)), KeyRange(("é",), ("😀",))])
    with pytest.raises(ValueError):
        check_ranges([KeyRange(("a",), ("é",)), KeyRange(("Z",), ("b",))])
    # Composite keys compare row-wise.
    check_ranges([KeyRange(None, K(1, "b")), KeyRange(K(1, "b"), K(2, ""))])
    assert R(None, None).children([(3,), (7,)]) == [R(None, 3), R(3, 7), R(7, None)]


def test_equal_ranges_are_dropped_differing_small_ones_are_leaves() -> None:
    r0, r1, r2 = R(None, 10), R(10, 20), R(20, None)
    local = [RangeDigest(r0, 10, "x"), RangeDigest(r1, 10, "y"), RangeDigest(r2, 0, "")]
    peer = [RangeDigest(r0, 10, "x"), RangeDigest(r1, 11, "z"), RangeDigest(r2, 3, "w")]
    splits, leaves = narrow(local, peer, leaf_rows=64)
    assert splits == []
    assert [(leaf.range, leaf.count) for leaf in leaves] == [(r1, 11), (r2, 3)]


def test_a_large_differing_range_is_cut_by_the_side_with_more_rows() -> None:
    whole = R(None, None)
    splits, leaves = narrow(
        [RangeDigest(whole, 1000, "a")], [RangeDigest(whole, 999, "b")], leaf_rows=64
    )
    assert splits == [Split(whole, 1000, by_peer=False)] and leaves == []
    splits, _ = narrow([RangeDigest(whole, 0, "")], [RangeDigest(whole, 70, "b")], leaf_rows=64)
    assert splits == [Split(whole, 70, by_peer=True)]


def test_narrow_refuses_a_reply_for_other_ranges() -> None:
    with pytest.raises(ReconcileError, match="other ranges"):
        narrow([RangeDigest(R(1, 2), 1, "a")], [RangeDigest(R(2, 3), 1, "a")], leaf_rows=64)


def _row(i: str, updated: str, origin: str, digest: str) -> RowDigest:
    return RowDigest((i,), updated, origin, digest)


def test_repair_rule() -> None:
    local = [
        _row("1", T1, "a", "same"),  # equal: nothing
        _row("2", T1, "a", "d2"),  # only here → a re-emits
        _row("4", T2, "a", "d4"),  # newer here → a re-emits
        _row("5", T1, "a", "d5"),  # older here → b re-emits
        _row("6", T1, "a", "d6"),  # same version, differs, origin a → a re-emits
        _row("7", T1, "b", "d7"),  # same version, differs, origin b → b re-emits
        _row("8", T1, "c", "d8"),  # origin names neither app → unresolved
        _row("9", T1, "b", "d9"),  # equal timestamps: greater origin wins ("b" > "a")
    ]
    peer = [
        _row("1", T1, "a", "same"),
        _row("3", T1, "b", "d3"),  # only there → b re-emits
        _row("4", T1, "b", "x4"),
        _row("5", T2, "b", "x5"),
        _row("6", T1, "a", "x6"),
        _row("7", T1, "b", "x7"),
        _row("8", T1, "c", "x8"),
        _row("9", T1, "a", "x9"),
    ]
    repairs = decide(local, peer, local_app="a", peer_app="b")
    assert repairs.to_peer == (("2",), ("4",), ("6",), ("9",))
    assert repairs.from_peer == (("3",), ("5",), ("7",))
    assert repairs.unresolved == (("8",),)


def test_protocol_round_trip_and_refusals() -> None:
    request = proto.Request("digests", "organization", ranges=(R(None, 3), R(3, None)))
    assert proto.decode_request(request.encode()) == request
    composite = proto.Request("rows", "line", ranges=(KeyRange(K(1, "a"), K(2, "é")),))
    assert proto.decode_request(composite.encode()) == composite
    keys = (K("6b7e4c2a-0000-4000-8000-000000000001"), K(-(2**63)), K(2**63 - 1, ""))
    assert proto.decode_request(proto.Request("reemit", "user", keys=keys).encode()).keys == keys
    for body, code, detail in (
        (b"not json", "bad_request", "not JSON"),
        (b"[" * 10_000 + b"]" * 10_000, "bad_request", "RecursionError"),
        (b'{"v": 1, "op": "rows", "resource": "user", "ranges": []}', "bad_request", "version"),
        (b'{"v": true, "op": "rows", "resource": "user", "ranges": []}', "bad_request", "version"),
        (b'{"v": 2, "op": "drop", "resource": "user"}', "bad_request", "unknown op"),
        (b'{"v": 2, "op": "rows", "resource": "user"}', "bad_request", "exactly"),
        (
            b'{"v": 2, "op": "rows", "resource": "user", "ranges": [], "x": 1}',
            "bad_request",
            "exactly",
        ),
        (b'{"v": 2, "op": "rows", "resource": "", "ranges": []}', "bad_request", "resource"),
        (
            b'{"v": 2, "op": "rows", "resource": "user", "ranges": ["zz"]}',
            "bad_request",
            "low, high",
        ),
        (b'{"v": 2, "op": "rows", "resource": "user", "ranges": [[1, 2]]}', "bad_request", "array"),
        (
            b'{"v": 2, "op": "rows", "resource": "user", "ranges": [[[], null]]}',
            "bad_request",
            "1 to",
        ),
        (
            b'{"v": 2, "op": "rows", "resource": "user", "ranges": [[[[1]], null]]}',
            "bad_request",
            "64-bit",
        ),
        (
            b'{"v": 2, "op": "rows", "resource": "user", "ranges": [[[true], null]]}',
            "bad_request",
            "64-bit",
        ),
        (
            b'{"v": 2, "op": "rows", "resource": "user", "ranges": [[[1.5], null]]}',
            "bad_request",
            "64-bit",
        ),
        (
            b'{"v": 2, "op": "reemit", "resource": "user", "keys": [[9223372036854775808]]}',
            "bad_request",
            "64-bit",
        ),
        (
            b'{"v": 2, "op": "reemit", "resource": "user", "keys": [[1,2,3,4,5,6,7,8,9]]}',
            "bad_request",
            "1 to 8",
        ),
        (b'{"v": 2, "op": "reemit", "resource": "user", "keys": "x"}', "bad_request", "list"),
        (
            json.dumps({"v": 2, "op": "reemit", "resource": "u", "keys": [["x" * 256]]}).encode(),
            "bad_request",
            "255",
        ),
        (b"x" * (proto.MAX_REQUEST_BYTES + 1), "too_large", "exceeds"),
    ):
        with pytest.raises(ReconcileRefusedError, match=detail) as refused:
            proto.decode_request(body)
        assert refused.value.code == code, body[:80]
    too_many = proto.Request("digests", "user", ranges=tuple(R(i, i + 1) for i in range(257)))
    with pytest.raises(ReconcileRefusedError) as refused:
        proto.decode_request(too_many.encode())
    assert refused.value.code == "too_large"
    splits = proto.Request("split", "user", ranges=tuple(R(i, i + 1) for i in range(33)))
    with pytest.raises(ReconcileRefusedError) as refused:
        proto.decode_request(splits.encode())
    assert refused.value.code == "too_large"
    reply = proto.decode_reply(proto.encode_digests([RangeDigest(R(1, 2), 2, "d")]))
    assert proto.digests_of(reply, [R(1, 2)]) == [RangeDigest(R(1, 2), 2, "d")]
    with pytest.raises(ReconcileError, match="malformed digests"):
        proto.digests_of(reply, [R(1, 2), R(2, 3)])


def test_a_refusal_carries_a_code_and_a_fixed_message_only() -> None:
    assert json.loads(proto.refusal("busy", "0a1b")) == {
        "v": 2,
        "ok": False,
        "code": "busy",
        "error": proto.REFUSALS["busy"],
        "request_id": "0a1b",
    }
    with pytest.raises(ReconcileRefusedError, match=r"busy .*request id 0a1b") as refused:
        proto.decode_reply(proto.refusal("busy", "0a1b"))
    assert (refused.value.code, refused.value.request_id) == ("busy", "0a1b")
    # What a peer (or an impostor) writes is not taken over: an unknown code and any
    # text become "internal"; a request id that is not short hex is dropped.
    forged = {
        "v": 2,
        "ok": False,
        "code": "\n<script>",
        "error": "x" * 10_000,
        "request_id": "$(rm)",
    }
    with pytest.raises(ReconcileRefusedError) as refused:
        proto.decode_reply(json.dumps(forged).encode())
    assert (refused.value.code, refused.value.request_id) == ("internal", None)
    assert "x" * 20 not in str(refused.value) and "rm" not in str(refused.value)


def test_reconcile_options_from_config_and_environment() -> None:
    from bridge.config import ReconcileOptions
    from bridge.env import config_from_env, models_module_from_env
    from bridge.errors import ConfigError

    assert ReconcileOptions().interval_seconds is None  # off by default
    assert ReconcileOptions(interval="0").interval_seconds is None
    assert ReconcileOptions(interval="10m").interval_seconds == 600.0
    with pytest.raises(ConfigError, match=r"reconcile\.leaf_rows"):
        ReconcileOptions(leaf_rows=0)
    options = ReconcileOptions(statement_timeout="250ms", max_concurrent_requests=2)
    assert (options.statement_timeout, options.max_concurrent_requests) == (0.25, 2)
    assert (ReconcileOptions().statement_timeout, ReconcileOptions().max_concurrent_requests) == (
        10.0,
        4,
    )
    for bad, option in (
        ({"statement_timeout": 0}, "statement_timeout"),
        ({"statement_timeout": "0.5ms"}, "statement_timeout"),
        ({"statement_timeout": 1e12}, "statement_timeout"),
        ({"max_concurrent_requests": 0}, "max_concurrent_requests"),
        ({"max_concurrent_requests": 2.5}, "max_concurrent_requests"),
    ):
        with pytest.raises(ConfigError, match=rf"reconcile\.{option}"):
            ReconcileOptions(**bad)  # type: ignore[arg-type]
    env = {"APP_NAME": "a", "DESTINATION_APP": "b", "RECONCILE_INTERVAL": "90s"}
    assert config_from_env(env).reconcile.interval_seconds == 90.0
    assert models_module_from_env({"BRIDGE_MODELS": "services.shared.models"}) == (
        "services.shared.models"
    )
