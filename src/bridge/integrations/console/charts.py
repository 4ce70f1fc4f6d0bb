"""Line charts as inline SVG, rendered on the server: no script, no Node build.

:func:`line_chart` draws the series of a :class:`~.history.History` over a fixed
span ending now: one polyline per run of known values (a ``None`` leaves a gap, a
lone point is a dot), a zero-based y axis rounded up to a readable maximum, grid
lines at round steps, how long ago on the x axis and a legend with each series' latest
value.  Every piece of text goes through :func:`markupsafe.escape`; colours and
numbers are ours.  The ``<svg>`` carries ``data-points`` (how many points it plots),
which the browser tests read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

from bridge.integrations.console.redact import UNSET

WIDTH, HEIGHT = 560, 190
LEFT, RIGHT, TOP, BOTTOM = 52, 12, 12, 46


@dataclass(frozen=True, slots=True)
class Series:
    """One line: its label, colour and ``(epoch seconds, value or None)`` points."""

    label: str
    color: str
    points: Sequence[tuple[float, float | None]]


def nice_max(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten at or above ``value`` (>0)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if value <= step * power * (1 + 1e-9):
            return step * power
    return 10 * power


def grid_steps(top: float) -> int:
    """How many grid intervals divide ``top`` (a :func:`nice_max`) into round steps:
    5 for 2.5 or 5 times a power of ten, else 4."""
    mantissa = top / 10.0 ** math.floor(math.log10(top))
    return 5 if round(mantissa, 6) in (2.5, 5.0) else 4


def format_value(value: float | None, unit: str) -> str:
    """``value`` for people: seconds as ms/s/min, rates with ``/s``, counts whole."""
    if value is None:
        return UNSET
    if unit == "s":
        if value < 1:
            return f"{value * 1000:.0f} ms"
        return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"
    if unit == "/s":
        return f"{value:.1f}/s" if value < 100 else f"{value:.0f}/s"
    return f"{value:.0f}" if value >= 10 else f"{value:g}"


def _ago(seconds: float) -> str:
    return f"-{seconds / 60:g}m" if seconds >= 120 else f"-{seconds:g}s"


def _runs(points: Sequence[tuple[float, float]]) -> list[list[tuple[float, float]]]:
    runs: list[list[tuple[float, float]]] = [[]]
    for point in points:
        if point[1] != point[1]:  # NaN marks a gap
            if runs[-1]:
                runs.append([])
            continue
        runs[-1].append(point)
    return [run for run in runs if run]


def line_chart(
    title: str,
    series: Sequence[Series],
    *,
    unit: str,
    span: float,
    now: float,
    empty_note: str = "no data yet: the first samples arrive within a minute",
) -> Markup:
    """An ``<svg>`` of ``series`` over the ``span`` seconds before ``now`` (module doc)."""
    start = now - span
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    visible = [
        [(at, value) for at, value in s.points if at >= start and value is not None] for s in series
    ]
    count = sum(len(points) for points in visible)
    top = nice_max(max((v for points in visible for _, v in points), default=0.0))

    def x(at: float) -> float:
        return LEFT + plot_w * min(max((at - start) / span, 0.0), 1.0)

    def y(value: float) -> float:
        return TOP + plot_h * (1 - min(max(value / top, 0.0), 1.0))

    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
        f'height="{HEIGHT}" data-points="{count}" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="#fbfbfd" '
        'stroke="#d0d4dc"/>',
    ]
    steps = grid_steps(top)
    for step in range(steps + 1):
        value = top * step / steps
        gy = y(value)
        parts.append(f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{gy:.1f}" y2="{gy:.1f}" '
                     'stroke="#e4e7ec"/>')  # fmt: skip
        parts.append(f'<text x="{LEFT - 6}" y="{gy + 4:.1f}" text-anchor="end" font-size="11" '
                     f'fill="#555">{escape(format_value(value, unit))}</text>')  # fmt: skip
    for step in range(5):
        fraction = step / 4
        label = "now" if step == 4 else _ago(span * (1 - fraction))
        parts.append(f'<text x="{LEFT + plot_w * fraction:.1f}" y="{TOP + plot_h + 15}" '
                     f'text-anchor="middle" font-size="11" fill="#555">{label}</text>')  # fmt: skip
    for s in series:
        gapped = [(at, v if v is not None else math.nan) for at, v in s.points if at >= start]
        color = escape(s.color)
        for run in _runs(gapped):
            if len(run) == 1:
                at, value = run[0]
                parts.append(f'<circle cx="{x(at):.1f}" cy="{y(value):.1f}" r="2.5" '
                             f'fill="{color}"/>')  # fmt: skip
            else:
                coords = " ".join(f"{x(at):.1f},{y(value):.1f}" for at, value in run)
                parts.append(f'<polyline points="{coords}" fill="none" stroke="{color}" '
                             'stroke-width="1.8"/>')  # fmt: skip
    legend_x = LEFT
    for s, points in zip(series, visible, strict=True):
        latest = points[-1][1] if points else None
        text = f"{s.label}: {format_value(latest, unit)}"
        parts.append(f'<rect x="{legend_x}" y="{HEIGHT - 16}" width="10" height="10" '
                     f'fill="{escape(s.color)}"/>')  # fmt: skip
        parts.append(f'<text x="{legend_x + 14}" y="{HEIGHT - 7}" font-size="11" '
                     f'fill="#222">{escape(text)}</text>')  # fmt: skip
        legend_x += 24 + 7 * len(text)
    if count == 0:
        parts.append(f'<text x="{LEFT + plot_w / 2:.1f}" y="{TOP + plot_h / 2:.1f}" '
                     f'text-anchor="middle" font-size="12" fill="#888">'
                     f"{escape(empty_note)}</text>")  # fmt: skip
    parts.append("</svg>")
    return Markup("".join(parts))
