"""From scraped ``/metrics`` texts to ``promtool test rules`` files, and promtool itself.

A **phase** is one moment of a real run: for each scrape target (``instance``) the
samples its ``/metrics`` returned, or ``None`` when the scrape failed (Prometheus'
``up`` is then 0).  :func:`promtool_case` lays a baseline phase (minutes
0..``BASELINE``-1) and a second phase (from minute ``BASELINE`` on) out as promtool
input series, one sample a minute, the way Prometheus would have recorded those
targets if they had stayed in that state:

- a sample keeps its value through its phase (counters do not move on their own);
- ``*_age_seconds`` gauges above 0 grow by 60 a minute (the age of something still
  waiting grows with the clock);
- ``*_timestamp_seconds`` gauges above 0 are moved onto promtool's clock (which
  starts at 0), keeping how long ago they were;
- a series absent from a phase is absent there (``_``), as after a failed source.

Every series gets the labels a scrape config adds: ``job``, ``instance``, ``app``.
Nothing here starts a process except :func:`promtool`.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "jetstream-bridge.json"
JOB = "jetstream-bridge"
#: Minutes of the baseline phase; the second phase starts here.
BASELINE = 10
#: Minutes of input series in all.
LENGTH = 100

SeriesKey = tuple[str, tuple[tuple[str, str], ...]]


@dataclass
class Target:
    """One scrape: the target's labels and its samples (``None``: the scrape failed)."""

    app: str
    instance: str
    samples: dict[SeriesKey, float] | None
    wall_time: float = 0.0

    @property
    def labels(self) -> dict[str, str]:
        return {"job": JOB, "instance": self.instance, "app": self.app}

    def names(self) -> set[str]:
        return {name for name, _ in (self.samples or {})}


def parse_exposition(text: str) -> dict[SeriesKey, float]:
    """Samples of a Prometheus text exposition by (name, sorted labels)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _selector(name: str, labels: Mapping[str, str]) -> str:
    pairs = (f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
    return f"{name}{{{','.join(pairs)}}}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def segment(name: str, value: float | None, *, samples: int, start_minute: int,
            wall_time: float) -> str:  # fmt: skip
    """``samples`` one-minute samples of one series through one phase (module doc)."""
    last = samples - 1
    if value is None:
        return f"_x{last}"
    if name.endswith("_age_seconds") and value > 0:
        return f"{_number(value)}+60x{last}"
    if name.endswith("_timestamp_seconds") and value > 0:
        value = value - wall_time + start_minute * 60
    return f"{_number(value)}x{last}"


def input_series(baseline: Sequence[Target], phase: Sequence[Target]) -> list[dict[str, str]]:
    """promtool ``input_series`` for targets in ``baseline`` then in ``phase``; ``up``
    for each target from whether its scrape succeeded."""
    keys: dict[tuple[str, str, SeriesKey], None] = {}
    for target in (*baseline, *phase):
        for key in target.samples or {}:
            keys[(target.app, target.instance, key)] = None
        keys[(target.app, target.instance, ("up", ()))] = None

    def lookup(targets: Sequence[Target], app: str, instance: str, key: SeriesKey
               ) -> tuple[float | None, float]:  # fmt: skip
        for target in targets:
            if (target.app, target.instance) == (app, instance):
                if key == ("up", ()):
                    return (0.0 if target.samples is None else 1.0), target.wall_time
                return (target.samples or {}).get(key), target.wall_time
        return None, 0.0

    series = []
    for app, instance, key in keys:
        name, labels = key
        parts = []
        for targets, start, count in (
            (baseline, 0, BASELINE),
            (phase, BASELINE, LENGTH - BASELINE),
        ):
            value, wall = lookup(targets, app, instance, key)
            parts.append(segment(name, value, samples=count, start_minute=start, wall_time=wall))
        all_labels = {**dict(labels), "job": JOB, "instance": instance, "app": app}
        series.append({"series": _selector(name, all_labels), "values": " ".join(parts)})
    return series


def load_alerts(path: Path = ALERTS) -> list[dict[str, Any]]:
    document = yaml.safe_load(path.read_text())
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


_TEMPLATE = re.compile(r"\{\{\s*\$labels\.([a-z_]+)\s*\}\}")


def render(text: str, labels: Mapping[str, str]) -> str:
    """An annotation as Prometheus renders it; only ``{{ $labels.x }}`` is allowed."""
    rendered = _TEMPLATE.sub(lambda m: labels.get(m.group(1), ""), text)
    assert "{{" not in rendered, f"annotation uses more than $labels: {text!r}"
    return rendered


def expected_alert(rule: Mapping[str, Any], labels: Mapping[str, str]) -> dict[str, Any]:
    """What promtool must see for ``rule`` firing with the expression's ``labels``."""
    all_labels = {**labels, **rule.get("labels", {})}
    return {
        "exp_labels": all_labels,
        "exp_annotations": {k: render(v, all_labels) for k, v in rule["annotations"].items()},
    }


def promtool_binary() -> str:
    """promtool, installed by scripts/install_promtool.sh when missing (as make test does)."""
    given = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if given:
        return given
    result = subprocess.run(
        [str(ROOT / "scripts" / "install_promtool.sh")], capture_output=True, text=True, check=False
    )
    found = shutil.which("promtool")
    assert result.returncode == 0 and found, f"promtool is needed: {result.stderr}"
    return found


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool_binary(), *args], capture_output=True, text=True, check=False, cwd=cwd,
        timeout=120,
    )  # fmt: skip


_RANGE_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
_LABEL_VARIABLE = re.compile(r"\$\{?(app|instance)\}?")
_METRIC = re.compile(r"\b(bridge_[a-z0-9_]+|up)\b")


def dashboard_expressions(dashboard: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(panel title, expr)`` of every target of every panel, rows included."""

    def walk(panels: Iterable[Mapping[str, Any]]) -> Iterable[tuple[str, str]]:
        for panel in panels:
            for target in panel.get("targets", []):
                yield panel["title"], target["expr"]
            yield from walk(panel.get("panels", []))

    return list(walk(dashboard["panels"]))


def as_promql(expr: str) -> str:
    """A Grafana expression with its variables replaced, as Prometheus would run it."""
    for variable, value in _RANGE_VARIABLES.items():
        expr = expr.replace(variable, value)
    return _LABEL_VARIABLE.sub(".*", expr)


def metric_names(expr: str) -> set[str]:
    """Metric names an expression reads (``bridge_*`` and ``up``; no label of ours
    starts with ``bridge_`` and no string in the files is the word ``up``)."""
    return set(_METRIC.findall(expr))
