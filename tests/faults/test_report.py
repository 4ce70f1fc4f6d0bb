"""``scripts/reliability_report.py`` renders every result file and never hides a failure."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "reliability_report.py"


def report_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("reliability_report", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def result(scenario: str, passed: bool, **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "scenario": scenario, "title": f"title of {scenario}", "passed": passed,
        "topology": "t", "config": {"ack_wait": 2.0}, "seed": 7, "wall_seconds": 1.0,
        "finished_at": "2026-01-01T00:00:00Z",
        "load": {"workers": 2, "duration_seconds": 1.0, "writes": 10, "acked": 8,
                 "rejected": 1, "indeterminate": 1, "acked_by_kind": {}, "statuses": {}},
        "faults": [{"kind": "kill -9", "target": "nats-server", "at": 0.5}],
        "events_written": 8, "events_lost": 0, "duplicates_applied": 0,
        "duplicates_published": 0, "echoes": 0, "redeliveries": 3, "deliveries": {},
        "dead_letters": {}, "converged": True, "time_to_converge_seconds": 1.25,
        "stream_messages": {}, "rows": {}, "violations": [],
    }  # fmt: skip
    return base | changes


def test_renders_a_row_per_scenario_in_issue_order_and_flags_failures(tmp_path: Path) -> None:
    module = report_module()
    results = tmp_path / "results"
    results.mkdir()
    lost = result("nats_kill9_restart", False, events_lost=2, violations=["lost: #3"])
    for item in (result("scale_out_2x2", True), lost):
        (results / f"{item['scenario']}.json").write_text(json.dumps(item))
    (results / "scale_out_2x2.history.json").write_text("[]")  # not a result file
    out = tmp_path / "RELIABILITY.md"

    assert module.main(["--results", str(results), "--out", str(out)]) == 0
    text = out.read_text()
    assert "2 scenario(s), 1 passed, **1 FAILED: nats_kill9_restart**." in text
    rows = [
        line for line in text.splitlines() if line.startswith("| 1 ") or line.startswith("| 2 ")
    ]
    assert "title of nats_kill9_restart" in rows[0] and "**FAIL**" in rows[0]
    assert "title of scale_out_2x2" in rows[1] and "| pass |" in rows[1]
    assert "`lost: #3`" in text and "make test-faults" in text


def test_no_result_files_is_an_error(tmp_path: Path) -> None:
    assert report_module().main(["--results", str(tmp_path), "--out", str(tmp_path / "x.md")]) == 1


def test_time_to_converge_after_healing_is_shown_when_the_scenario_has_a_heal(
    tmp_path: Path,
) -> None:
    module = report_module()
    results = tmp_path / "results"
    results.mkdir()
    healed = result("partition_bridge_nats", True, time_to_converge_after_heal_seconds=4.25)
    for item in (healed, result("nats_kill9_restart", True)):
        (results / f"{item['scenario']}.json").write_text(json.dumps(item))
    out = tmp_path / "RELIABILITY.md"

    assert module.main(["--results", str(results), "--out", str(out)]) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith(("| 1 ", "| 2 "))]
    assert "nats_kill9_restart" in rows[0] and "| 1.2 s | pass |" in rows[0]  # no heal
    assert "partition_bridge_nats" in rows[1]
    assert "| 1.2 s (4.2 s after healing) | pass |" in rows[1]
