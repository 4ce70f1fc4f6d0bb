"""One fault scenario from load to verdict, and the JSON result file it leaves behind.

:func:`run_scenario` is the shape every scenario shares:

1. start the load (:class:`fault_load.Load`) against both sides and wait until it is
   really running (some writes acknowledged);
2. run ``inject`` — the fault itself — while the load goes on; it records what it did
   in a :class:`FaultLog`;
3. keep the load going ``after`` seconds more (and, with ``min_acked``, until that many
   writes were acknowledged: a condition, not a time, on a slow machine), then stop it;
   run ``settle`` if given
   (what the scenario does once the load stopped, e.g. fix a clock and replay dead
   letters; it records what it did in the same :class:`FaultLog`);
4. wait for quiescence with a deadline (:func:`fault_checker.wait_quiescent`) — timed
   from the end of the load and, when ``inject`` marked the end of its fault with
   :meth:`FaultLog.heal` (a partition healed, storage freed), from that moment too;
5. read both databases and the whole stream and :func:`fault_checker.check` them;
6. write ``<results_dir>/<scenario>.json`` (passed or not) for
   ``scripts/reliability_report.py``, and return the result.

The caller asserts ``result.passed`` (the message lists the violations).
"""

from __future__ import annotations

import json
import platform
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fault_checker import check, consumer_lag, read_side, read_stream, wait_quiescent
from fault_history import History
from fault_load import Load
from fault_stack import Deployment

from bridge.subjects import Subjects


@dataclass
class FaultLog:
    """What was injected, when (seconds since the load started), for how long."""

    started: float = field(default_factory=time.monotonic)
    faults: list[dict[str, Any]] = field(default_factory=list)
    #: When the fault last ended (:meth:`heal`): convergence is also timed from there.
    healed: float | None = None

    def note(self, kind: str, target: str, **detail: Any) -> None:
        self.faults.append(
            {"kind": kind, "target": target, "at": round(time.monotonic() - self.started, 2)}
            | detail
        )

    def heal(self, target: str, **detail: Any) -> None:
        """Note that the fault ended (the partition healed, the space was freed)."""
        self.note("heal", target, **detail)
        self.healed = time.monotonic()


@dataclass
class ScenarioResult:
    scenario: str
    title: str
    passed: bool
    topology: str
    config: dict[str, Any]
    load: dict[str, Any]
    faults: list[dict[str, Any]]
    events_written: int
    events_lost: int
    duplicates_applied: int
    duplicates_published: int
    echoes: int
    redeliveries: int
    deliveries: dict[str, dict[str, int]]
    dead_letters: dict[str, int]
    converged: bool
    time_to_converge_seconds: float
    stream_messages: dict[str, int]
    rows: dict[str, int]
    violations: list[str]
    seed: int
    wall_seconds: float
    finished_at: str
    python: str = field(default_factory=platform.python_version)
    #: From the last :meth:`FaultLog.heal` to quiescence (None: the scenario has no heal).
    time_to_converge_after_heal_seconds: float | None = None

    def failure_message(self) -> str:
        head = f"{self.scenario}: {len(self.violations)} violation(s), seed {self.seed}"
        return "\n".join([head, *self.violations[:30]])


async def run_scenario(
    *,
    scenario: str,
    title: str,
    topology: str,
    config: dict[str, Any],
    deployment: Deployment,
    inject: Callable[[FaultLog], Awaitable[None]],
    results_dir: Path,
    seed: int,
    workers: int = 6,
    warmup_acked: int = 40,
    after: float = 2.0,
    max_load_seconds: float = 60.0,
    converge_timeout: float = 90.0,
    expected_dead_letters: Counter[str] | None = None,
    injected: Collection[int] = (),
    pace: float = 0.01,
    shared: bool = False,
    min_acked: int = 0,
    settle: Callable[[FaultLog], Awaitable[None]] | None = None,
    replayed_reasons: Collection[str] = (),
    replayed_letters: Mapping[str, str] | None = None,
) -> ScenarioResult:
    """``injected``: stream sequences of messages ``inject`` published itself (poison),
    read at check time (a set the injector fills is fine); see :func:`fault_checker.check`.

    ``shared``: every worker writes every record on both sides (:mod:`fault_load`), and
    the checker applies last-writer-wins' record rule (:mod:`fault_lww`).
    ``replayed_reasons``: dead letters of these reasons that ``settle`` replayed are
    folded into their events (:mod:`fault_replays`); ``replayed_letters`` (event id →
    reason) are the letters ``settle`` replayed, recorded as it did (a replay removes them)."""
    wall = time.monotonic()
    history = History()
    load = Load(deployment.sides, history, seed=seed, workers=workers, pace=pace, shared=shared)
    faults = FaultLog()
    load.start(max_load_seconds)
    try:
        await load.wait_acked(warmup_acked, timeout=30)
        await inject(faults)
        faults.note("load-continues", "load", seconds=after)
        await _sleep_bounded(after)
        if min_acked:
            await load.wait_acked(min_acked, timeout=max_load_seconds)
    finally:
        await load.stop()
    if settle is not None:
        await settle(faults)
    sides = [(s.app, s.peer, s.database_url) for s in deployment.sides]
    waited_from = time.monotonic()
    converged, took, detail = await wait_quiescent(
        sides, deployment.nats_urls, deployment.stream, timeout=converge_timeout
    )
    after_heal = (
        round(waited_from + took - faults.healed, 2)
        if faults.healed is not None and converged
        else None
    )
    state_a = await read_side(deployment.a.database_url, deployment.a.app)
    state_b = await read_side(deployment.b.database_url, deployment.b.app)
    messages = await read_stream(deployment.nats_urls, deployment.stream)
    verdict = check(
        history,
        state_a,
        state_b,
        messages,
        expected_dead_letters=expected_dead_letters,
        injected=injected,
        lww=shared,
        replayed_reasons=replayed_reasons,
        replayed_letters=replayed_letters,
    )
    deliveries = await _deliveries(deployment, verdict.stream_messages)
    if not converged:
        verdict.fail(f"not quiescent within {converge_timeout}s: {detail}")
    result = ScenarioResult(
        scenario=scenario,
        title=title,
        passed=not verdict.violations,
        topology=topology,
        config=config,
        load=history.summary() | {"workers": workers},
        faults=faults.faults,
        events_written=verdict.events_written,
        events_lost=verdict.events_lost,
        duplicates_applied=verdict.duplicates_applied,
        duplicates_published=verdict.duplicates_published,
        echoes=verdict.echoes,
        redeliveries=sum(d["redeliveries"] for d in deliveries.values()),
        deliveries=deliveries,
        dead_letters=verdict.dead_letters,
        converged=converged,
        time_to_converge_seconds=round(took, 2),
        stream_messages=verdict.stream_messages,
        rows=verdict.rows,
        violations=verdict.violations,
        seed=seed,
        wall_seconds=round(time.monotonic() - wall, 1),
        finished_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        time_to_converge_after_heal_seconds=after_heal,
    )
    write_result(results_dir, result, history)
    return result


async def _deliveries(
    deployment: Deployment, stream_messages: dict[str, int]
) -> dict[str, dict[str, int]]:
    """Per durable: deliveries the server made, and how many were redeliveries.

    Server-side evidence that the fault really hit in-flight deliveries: the consumer
    sequence counts every delivery (NAKs with delay, ack-wait expiries, deliveries lost
    with a killed process), the stream holds each message once.
    """
    out: dict[str, dict[str, int]] = {}
    subjects = [Subjects(s.app, s.peer) for s in deployment.sides]
    lag = await consumer_lag(deployment.nats_urls, deployment.stream, [s.durable for s in subjects])
    for names in subjects:
        delivered = int(lag[names.durable]["deliveries"])
        messages = stream_messages.get(names.consume, 0)
        out[names.durable] = {
            "messages": messages,
            "deliveries": delivered,
            "redeliveries": delivered - messages,
        }
    return out


def write_probe_result(
    results_dir: Path,
    *,
    scenario: str,
    title: str,
    topology: str,
    config: dict[str, Any],
    faults: list[dict[str, Any]],
    violations: list[str],
    wall_seconds: float,
    dead_letters: dict[str, int],
) -> ScenarioResult:
    """A result file for a targeted (not load-driven) fault test, so the report lists it."""
    result = ScenarioResult(
        scenario=scenario, title=title, passed=not violations, topology=topology,
        config=config, faults=faults, violations=violations,
        load={"workers": 0, "duration_seconds": 0.0, "writes": 2, "acked": 2, "rejected": 0,
              "indeterminate": 0, "acked_by_kind": {}, "statuses": {}},
        events_written=2, events_lost=len(violations), duplicates_applied=0,
        duplicates_published=0, echoes=0, redeliveries=0, deliveries={},
        dead_letters=dead_letters, converged=not violations, time_to_converge_seconds=0.0,
        stream_messages={}, rows={}, seed=0, wall_seconds=round(wall_seconds, 1),
        finished_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )  # fmt: skip
    write_result(results_dir, result, History())
    return result


async def _sleep_bounded(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(max(0.0, min(seconds, 30.0)))


def write_result(results_dir: Path, result: ScenarioResult, history: History) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{result.scenario}.json"
    path.write_text(json.dumps(asdict(result), indent=2, sort_keys=True) + "\n")
    # The full history next to it: what to read when a scenario fails.
    (results_dir / f"{result.scenario}.history.json").write_text(
        json.dumps(history.dump(), default=str) + "\n"
    )
    return path
