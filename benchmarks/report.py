"""docs/BENCHMARKS.md as two sections written by two commands.

``make bench`` (``python -m benchmarks``) owns everything above the ``## Peers``
heading; ``make bench-peers`` (``python -m benchmarks.peers``) owns that section.
Each writer replaces only its own part (:func:`replace_section`), so running one
keeps the other's latest figures.  Pure text functions; ``tests/unit`` checks them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from benchmarks.stats import Line

PEERS_HEADING = "## Peers"
_ROW = re.compile(r"^\| `([^`]+)` \| ([^|]+) \| ([^|]*) \|", re.M)


def format_line(line: Line) -> str:
    """The machine-readable form ``bench <name> <value> <unit>``."""
    name, value, unit = line
    return f"bench {name} {value:.4g} {unit}".rstrip()


def table(lines: Iterable[Line], targets: dict[str, str], bounds: dict[str, str]) -> str:
    """The figures as a Markdown table: figure, value, unit, target, what bounds it."""
    rows = [
        f"| `{name}` | {value:.4g} | {unit} | {targets.get(name, '')} | {bounds.get(name, '')} |"
        for name, value, unit in lines
    ]
    return "\n".join(
        ["| figure | value | unit | target | bound by |", "|---|---|---|---|---|", *rows]
    )


_GOAL = re.compile(r"^\s*(>=|<=|<|>)\s*([0-9.]+)")
_COMPARE = {
    ">=": lambda value, goal: value >= goal,
    "<=": lambda value, goal: value <= goal,
    "<": lambda value, goal: value < goal,
    ">": lambda value, goal: value > goal,
}


def goal_met(value: float, target: str) -> bool | None:
    """Whether ``value`` meets a target written ``>= 0.5``, ``< 20 at ...``, ``<= 15 %``;
    ``None`` for a target that is not such a bound (a note, an asserted 0)."""
    match = _GOAL.match(target)
    if match is None:
        return None
    return bool(_COMPARE[match.group(1)](value, float(match.group(2))))


def goals(
    lines: Iterable[Line], names: Iterable[str], targets: dict[str, str], bounds: dict[str, str]
) -> str:
    """One Markdown list item per headline figure with a bound: met or not, and what
    bounds it (a figure that misses says why)."""
    values = {name: value for name, value, _ in lines}
    items = []
    for name in names:
        target = targets.get(name, "")
        met = goal_met(values[name], target) if name in values else None
        if met is None:
            continue
        verdict = "met" if met else f"**not met** — bound: {bounds.get(name) or 'see below'}"
        items.append(f"- `{name}` {values[name]:.4g} (goal {target}): {verdict}")
    return "\n".join(items)


def pending_table(names: Iterable[str], targets: dict[str, str], bounds: dict[str, str]) -> str:
    """The table of :func:`table` with every value still to be measured."""
    rows = [
        f"| `{name}` | pending |  | {targets.get(name, '')} | {bounds.get(name, '')} |"
        for name in names
    ]
    return "\n".join(
        ["| figure | value | unit | target | bound by |", "|---|---|---|---|---|", *rows]
    )


def parse_table(text: str) -> list[Line]:
    """The figures of a report written by :func:`table` (or by the older 4-column one)."""
    lines: list[Line] = []
    for match in _ROW.finditer(text):
        name, value, unit = match.group(1), match.group(2).strip(), match.group(3).strip()
        try:
            lines.append((name, float(value), unit))
        except ValueError:
            continue
    return lines


def keep_previous(previous: Sequence[Line], rerun_prefixes: tuple[str, ...]) -> list[Line]:
    """The previous figures whose name does not start with a re-run benchmark's prefix."""
    return [line for line in previous if not line[0].startswith(rerun_prefixes)]


def split_sections(text: str) -> tuple[str, str]:
    """(main part, peers section including its heading; empty when there is none)."""
    match = re.search(rf"^{re.escape(PEERS_HEADING)}\b", text, re.M)
    if match is None:
        return text, ""
    return text[: match.start()], text[match.start() :]


def replace_section(text: str, *, main: str | None = None, peers: str | None = None) -> str:
    """``text`` with its main part and/or its peers section replaced."""
    old_main, old_peers = split_sections(text)
    new_main = (main if main is not None else old_main).rstrip() + "\n"
    new_peers = peers if peers is not None else old_peers
    if new_peers and not new_peers.startswith(PEERS_HEADING):
        raise ValueError(f"the peers section must start with {PEERS_HEADING!r}")
    return new_main + ("\n" + new_peers.rstrip() + "\n" if new_peers else "")
