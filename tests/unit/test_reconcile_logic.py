"""Pure parts of reconciliation: range bounds, narrowing, the repair rule, the protocol."""

from __future__ import annotations

import pytest

from bridge import reconcile_protocol as proto
from bridge.errors import ReconcileError
from bridge.reconcile import decide, narrow
from bridge.reconcile_digest import HEX, RangeDigest, RowDigest, bounds

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
    assert proto.decode_request(request.encode()) == request
    ids = ("6b7e4c2a-0000-4000-8000-000000000001",)
    assert proto.decode_request(proto.Request("reemit", "user", ids=ids).encode()).ids == ids
    for body, message in (
        (b"not json", "not JSON"),
        (b'{"v": 2, "op": "rows", "resource": "user", "ranges": []}', "version"),
        (b'{"v": 1, "op": "drop", "resource": "user"}', "unknown op"),
        (b'{"v": 1, "op": "rows", "resource": "user", "ranges": ["zz"]}', "hex prefix"),
        (b'{"v": 1, "op": "reemit", "resource": "user", "ids": ["nope"]}', "ids"),
        (b"x" * (proto.MAX_REQUEST_BYTES + 1), "exceeds"),
    ):
        with pytest.raises(ReconcileError, match=message):
            proto.decode_request(body)
    with pytest.raises(ReconcileError, match="peer refused: no such"):
        proto.decode_reply(proto.error("no such"))
    reply = proto.decode_reply(proto.encode_digests([RangeDigest("a", 2, "d")]))
    assert proto.digests_of(reply) == [RangeDigest("a", 2, "d")]


def test_reconcile_options_from_config_and_environment() -> None:
    from bridge.config import ReconcileOptions
    from bridge.envconfig import config_from_env, models_module_from_env
    from bridge.errors import ConfigError

    assert ReconcileOptions().interval_seconds is None  # off by default
    assert ReconcileOptions(interval="0").interval_seconds is None
    assert ReconcileOptions(interval="10m").interval_seconds == 600.0
    with pytest.raises(ConfigError, match=r"reconcile\.leaf_rows"):
        ReconcileOptions(leaf_rows=0)
    env = {"APP_NAME": "a", "DESTINATION_APP": "b", "RECONCILE_INTERVAL": "90s"}
    assert config_from_env(env).reconcile.interval_seconds == 90.0
    assert models_module_from_env({"BRIDGE_MODELS": "services.shared.models"}) == (
        "services.shared.models"
    )
