"""The benchmark harness's pure logic: percentiles, median-of-runs ratios, lost and
duplicated counting, report sections.  Nothing timing-based is asserted here; the
figures themselves are recorded in docs/BENCHMARKS.md, not tested."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest

from benchmarks.report import (
    PEERS_HEADING,
    format_line,
    keep_previous,
    parse_table,
    replace_section,
    split_sections,
    table,
)
from benchmarks.stats import (
    check_delivery,
    interleaved,
    latency_lines,
    median_ratio,
    percentile,
    ratio_lines,
)
from benchmarks.workload import PAYLOAD_BYTES, payload


def test_percentile_is_nearest_rank_of_measured_values() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile(values, 0) == 1
    assert percentile([7.0], 99) == 7.0
    # order of the input does not matter
    assert percentile(list(reversed(values)), 99) == 99
    # 2500 samples: p99 is the 2475th smallest, a value that was measured
    many = [float(v) for v in range(2500)]
    assert percentile(many, 99) == 2474.0


@pytest.mark.parametrize("bad", [-1, 101])
def test_percentile_refuses_out_of_range(bad: float) -> None:
    with pytest.raises(ValueError, match=r"within 0\.\.100"):
        percentile([1.0], bad)


def test_percentile_of_nothing_is_an_error_not_a_zero() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def test_median_ratio_reports_the_median_round_and_its_own_absolute_figures() -> None:
    # (baseline, ours): ratios 0.5, 0.25, 0.8 -> median 0.5, from the first round
    runs = median_ratio([(100.0, 50.0), (200.0, 50.0), (100.0, 80.0)])
    assert runs.median == 0.5
    assert runs.median_pair == (100.0, 50.0)
    assert runs.spread == pytest.approx(0.55)
    lines = ratio_lines("x_ratio", runs, base="x_raw", ours="x_ours", unit="events/s")
    assert lines == [
        ("x_raw", 100.0, "events/s"),
        ("x_ours", 50.0, "events/s"),
        ("x_ratio", 0.5, "ratio"),
        ("x_ratio_spread", 0.55, "ratio over 3 runs"),
    ]
    # ours left out when another ratio printed it already
    names = [n for n, _, _ in ratio_lines("y", runs, base="y_raw", ours=None, unit="u")]
    assert names == ["y_raw", "y", "y_spread"]


def test_median_ratio_of_an_even_count_picks_the_lower_middle_pair() -> None:
    runs = median_ratio([(10.0, 9.0), (10.0, 1.0)])  # ratios 0.9, 0.1
    assert runs.median == pytest.approx(0.5)  # statistics.median of the ratios
    assert runs.median_pair == (10.0, 1.0)


def test_median_ratio_refuses_no_runs_and_a_baseline_that_measured_nothing() -> None:
    with pytest.raises(ValueError, match="at least one run"):
        median_ratio([])
    with pytest.raises(ValueError, match="measured nothing"):
        median_ratio([(0.0, 5.0)])


async def test_interleaved_alternates_the_measures_round_by_round() -> None:
    calls: list[str] = []

    def measure(name: str, value: float):  # type: ignore[no-untyped-def]
        async def run() -> float:
            calls.append(name)
            return value

        return run

    rounds = await interleaved(3, measure("raw", 1.0), measure("ours", 2.0))
    assert calls == ["raw", "ours"] * 3
    assert rounds == [(1.0, 2.0)] * 3
    with pytest.raises(ValueError, match="runs must be >= 1"):
        await interleaved(0, measure("raw", 1.0))


def test_check_delivery_counts_lost_duplicated_and_unexpected_by_event_id() -> None:
    stored = Counter({"a": 1, "b": 2, "z": 1})  # b stored twice, z nobody committed
    delivery = check_delivery(["a", "b", "c"], stored)  # c never stored
    assert (delivery.expected, delivery.lost, delivery.duplicated, delivery.unexpected) == (
        3,
        1,
        1,
        1,
    )
    clean = check_delivery(["a"], Counter({"a": 1}))
    assert (clean.lost, clean.duplicated) == (0, 0)


def test_latency_lines_match_commits_and_arrivals_by_id() -> None:
    committed = {f"e{i}": 0.0 for i in range(100)}
    arrived = {f"e{i}": (i + 1) / 1000 for i in range(99)}  # e99 never arrived
    lines = {name: (value, unit) for name, value, unit in latency_lines("p", committed, arrived)}
    assert lines["p_p50_ms"] == (50.0, "ms")
    assert lines["p_p99_ms"] == (99.0, "ms")
    assert lines["p_received"] == (99.0, "of 100")
    assert latency_lines("p", {"x": 0.0}, {}) == [("p_received", 0.0, "of 1")]


def test_workload_payload_is_about_300_bytes_of_json() -> None:
    for i in (0, 7, 1_234_567):
        body = payload(i)
        assert len(json.dumps(body, separators=(",", ":"))) == PAYLOAD_BYTES
    assert payload(1)["id"] != payload(1)["id"]  # fresh record id per event


def test_report_table_round_trips_and_a_subset_rerun_keeps_the_others() -> None:
    lines = [("relay_vs_raw_ratio", 0.681, "ratio"), ("consumer_vs_raw_ratio", 0.5, "ratio")]
    text = table(lines, {"relay_vs_raw_ratio": ">= 0.60"}, {"relay_vs_raw_ratio": "CPU"})
    assert "| `relay_vs_raw_ratio` | 0.681 | ratio | >= 0.60 | CPU |" in text
    assert parse_table(text) == lines
    assert keep_previous(parse_table(text), ("relay_",)) == [lines[1]]
    # the older 4-column table of earlier reports parses too; "pending" values are skipped
    old = "| `x` | 1.5e+04 | events/s |  |\n| `y` | pending | ratio |  |"
    assert parse_table(old) == [("x", 15000.0, "events/s")]
    assert format_line(("x", 15000.0, "events/s")) == "bench x 1.5e+04 events/s"


def test_report_sections_are_replaced_independently() -> None:
    peers = f"{PEERS_HEADING}\n\n| library |\n"
    both = replace_section("", main="# Benchmarks\n\nmain v1\n", peers=peers)
    assert split_sections(both) == ("# Benchmarks\n\nmain v1\n\n", peers)
    # make bench rewrites the main part: the peers section stays
    after_bench = replace_section(both, main="# Benchmarks\n\nmain v2\n")
    assert "main v2" in after_bench and "main v1" not in after_bench
    assert after_bench.endswith(peers)
    # make bench-peers rewrites its section: the main part stays
    after_peers = replace_section(after_bench, peers=f"{PEERS_HEADING}\n\nnew table\n")
    assert "main v2" in after_peers and "new table" in after_peers
    assert "| library |" not in after_peers
    # a file without a peers section yet
    assert split_sections("# Benchmarks\n") == ("# Benchmarks\n", "")
    with pytest.raises(ValueError, match="must start with"):
        replace_section("", peers="no heading")


def test_the_report_structure_names_every_goal_figure_of_make_bench() -> None:
    from benchmarks.__main__ import HEADLINE, main_section

    goals = {
        "relay_vs_publish_async_ratio",
        "relay_commit_to_puback_p99_ms",
        "consumer_vs_raw_ratio",
        "e2e_1x1_vs_raw_ratio",
        "scale_2x2_vs_1x1",
        "scale_cost_100000_vs_10000_ratio",
        "outbox_bytes_per_row",
        "services_outbox_cost",
        "relay_vs_raw_ratio",
    }
    assert goals <= set(HEADLINE)
    pending = main_section([], pending=True)
    assert "Figures pending a quiet run" in pending
    for name in goals:
        assert f"| `{name}` | pending |" in pending
    assert parse_table(pending) == []  # nothing pending is read back as a figure
    filled = main_section([("relay_vs_publish_async_ratio", 0.61, "ratio")])
    assert "Latest run:" in filled
    assert parse_table(filled) == [("relay_vs_publish_async_ratio", 0.61, "ratio")]


def test_the_peers_section_lists_every_contender_pending_or_measured() -> None:
    from benchmarks.peers.__main__ import lines, section
    from benchmarks.peers.harness import CONTENDERS, Figures

    pending = section([Figures(c) for c in CONTENDERS], "nats-outbox 0.1.0", pending=True)
    assert pending.startswith(PEERS_HEADING)
    assert "Figures pending a quiet run" in pending
    for c in CONTENDERS:
        assert f"| {c.library} | {c.setting}: {c.described} | pending |" in pending

    measured = Figures(CONTENDERS[2], drains=[(100.0, 10.0), (100.0, 30.0), (100.0, 20.0)])
    measured.p50_ms, measured.p99_ms, measured.lost, measured.checked = 12.0, 40.0, 1, 100
    text = section([measured], "v")
    assert "| nats-outbox | default: " in text
    assert "| 20 | 0.200 | 12.0 | 40.0 | 1 | 0 |" in text  # the median round: 20 of 100
    by_name = {name: value for name, value, _ in lines([measured])}
    assert by_name["peers_nats_outbox_default_vs_publish_async_ratio"] == 0.2
    assert by_name["peers_nats_outbox_default_lost"] == 1.0


def test_cpu_meter_records_one_share_per_span_and_reports_the_median() -> None:
    from benchmarks.stats import CpuMeter

    meter = CpuMeter()
    name, value, unit = meter.line("x_cpu_percent")
    assert (name, unit) == ("x_cpu_percent", "% of one core") and math.isnan(value)
    for _ in range(3):
        with meter.span():
            sum(range(1000))
    assert len(meter.shares) == 3 and all(share >= 0 for share in meter.shares)
    meter.shares[:] = [0.5, 1.0, 0.25]  # the figure is the median, in percent
    assert meter.line("x_cpu_percent")[1] == 50.0


def test_goals_say_which_headline_figures_meet_their_bound() -> None:
    from benchmarks.report import goal_met, goals

    assert goal_met(0.41, ">= 0.50") is False and goal_met(13.8, "< 20 at 500 events/s") is True
    assert goal_met(890, "<= 1024 (~300 B payload)") is True
    assert goal_met(0, "0 (asserted)") is None and goal_met(1, "(old baseline)") is None
    text = goals(
        [("a", 0.4, "ratio"), ("b", 12.0, "ms"), ("c", 0.0, "events")],
        ["a", "b", "c", "missing"],
        {"a": ">= 0.5", "b": "< 20", "c": "0 (asserted)", "missing": ">= 1"},
        {"a": "the database"},
    )
    assert text.splitlines() == [
        "- `a` 0.4 (goal >= 0.5): **not met** — bound: the database",
        "- `b` 12 (goal < 20): met",
    ]
