"""Pure parts of reconciliation: range bounds, narrowing, the repair rule, the protocol."""

from __future__ import annotations

import json

import pytest

from bridge.errors import ReconcileError, ReconcileRefusedError
from bridge.reconcile import _protocol as proto
from bridge.reconcile._digest import HEX, RangeDigest, RowDigest, bounds
from bridge.reconcile.repair import decide, narrow

T1 = "2026-01-01T00:00:00.000001Z"
T2 = "2026-01-01T00:00:00.000002Z"


def test_bounds_cover_exactly_the_prefix() -> None:
    assert bounds("") == (
        "00000000-0000-0000-0000-000000000000",
        "ffffffff-ffff-ffff-ffff-ffffffffffff",
    )
    assert bounds("3a") == (
        "3a000000-0000-0000-0000-000000000000",
        "3affffff-ffff-ffff-ffff-ffffffffffff",
    )
    with pytest.raises(ReconcileError, match="hex prefix"):
        bounds("3G")


def test_equal_ranges_are_dropped_differing_small_ones_are_leaves() -> None:
    local = [RangeDigest("0", 10, "x"), RangeDigest("1", 10, "y"), RangeDigest("2", 0, "")]
    peer = [RangeDigest("0", 10, "x"), RangeDigest("1", 11, "z"), RangeDigest("2", 3, "w")]
    children, leaves = narrow(local, peer, leaf_rows=64)
    assert children == []
    assert [(leaf.prefix, leaf.count) for leaf in leaves] == [("1", 11), ("2", 3)]


def test_large_differing_range_fans_out_sixteen_ways_until_the_cap() -> None:
    children, leaves = narrow(
        [RangeDigest("", 1000, "a")], [RangeDigest("", 999, "b")], leaf_rows=64
    )
    assert children == list(HEX) and leaves == []
    # At the prefix length cap a large range is compared row by row anyway.
    children, leaves = narrow(
        [RangeDigest("ab", 1000, "a")],
        [RangeDigest("ab", 1000, "b")],
        leaf_rows=64,
        max_prefix_len=2,
    )
    assert children == [] and [leaf.prefix for leaf in leaves] == ["ab"]


def test_narrow_refuses_a_reply_for_other_ranges() -> None:
    with pytest.raises(ReconcileError, match="answered range"):
        narrow([RangeDigest("1", 1, "a")], [RangeDigest("2", 1, "a")], leaf_rows=64)


def _row(i: str, updated: str, origin: str, digest: str) -> RowDigest:
    return RowDigest(i, updated, origin, digest)


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
    assert repairs.to_peer == ("2", "4", "6", "9")
    assert repairs.from_peer == ("3", "5", "7")
    assert repairs.unresolved == ("8",)


def test_protocol_round_trip_and_refusals() -> None:
    request = proto.Request("digests", "organization", ranges=("", "a"))
    with pytest.raises(ReconcileRefusedError, match="overlap"):  # "a" lies inside ""
        proto.decode_request(request.encode())
    request = proto.Request("digests", "organization", ranges=("0", "a", "b0"))
    assert proto.decode_request(request.encode()) == request
    ids = ("6b7e4c2a-0000-4000-8000-000000000001",)
    assert proto.decode_request(proto.Request("reemit", "user", ids=ids).encode()).ids == ids
    for body, code, detail in (
        (b"not json", "bad_request", "not JSON"),
        (b"[" * 10_000 + b"]" * 10_000, "bad_request", "RecursionError"),
        (b'{"v": 2, "op": "rows", "resource": "user", "ranges": []}', "bad_request", "version"),
        (b'{"v": true, "op": "rows", "resource": "user", "ranges": []}', "bad_request", "version"),
        (b'{"v": 1, "op": "drop", "resource": "user"}', "bad_request", "unknown op"),
        (b'{"v": 1, "op": "rows", "resource": "user"}', "bad_request", "exactly"),
        (
            b'{"v": 1, "op": "rows", "resource": "user", "ranges": [], "x": 1}',
            "bad_request",
            "exactly",
        ),
        (b'{"v": 1, "op": "rows", "resource": "", "ranges": []}', "bad_request", "resource"),
        (
            b'{"v": 1, "op": "rows", "resource": "user", "ranges": ["zz"]}',
            "bad_request",
            "hex prefix",
        ),
        (
            b'{"v": 1, "op": "rows", "resource": "user", "ranges": [["0"]]}',
            "bad_request",
            "strings",
        ),
        (
            b'{"v": 1, "op": "rows", "resource": "user", "ranges": ["1", "1"]}',
            "bad_request",
            "overlap",
        ),
        (b'{"v": 1, "op": "reemit", "resource": "user", "ids": ["nope"]}', "bad_request", "ids"),
        (b'{"v": 1, "op": "reemit", "resource": "user", "ids": [7]}', "bad_request", "strings"),
        (b"x" * (proto.MAX_REQUEST_BYTES + 1), "too_large", "exceeds"),
    ):
        with pytest.raises(ReconcileRefusedError, match=detail) as refused:
            proto.decode_request(body)
        assert refused.value.code == code, body[:80]
    too_many = proto.Request("digests", "user", ranges=tuple(f"{i:03x}" for i in range(257)))
    with pytest.raises(ReconcileRefusedError) as refused:
        proto.decode_request(too_many.encode())
    assert refused.value.code == "too_large"
    reply = proto.decode_reply(proto.encode_digests([RangeDigest("a", 2, "d")]))
    assert proto.digests_of(reply) == [RangeDigest("a", 2, "d")]


def test_a_refusal_carries_a_code_and_a_fixed_message_only() -> None:
    assert json.loads(proto.refusal("busy", "0a1b")) == {
        "v": 1,
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
        "v": 1,
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
