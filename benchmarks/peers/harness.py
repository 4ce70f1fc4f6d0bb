"""Run every contender on the same workload, servers and raw baseline; collect figures.

Contenders (:data:`CONTENDERS`): the bridge's relay in this process, and each peer's
runner script executed with the peers' virtualenv's python (:mod:`runner_common`
describes the protocol).  "default" is each library's defaults; "best" is the
settings that read best in its source for throughput — say which in :data:`CONTENDERS`.

Per round (``BENCH_RUNS``, 3): one ``publish_async`` raw run
(:func:`benchmarks.raw.publish_async`, on a fresh stream), then every contender
drains ``N`` pre-inserted outbox rows onto a fresh stream in a fresh database; the
contender's ratio is the median over the rounds of drain / that round's raw.  Then
each contender runs once at a steady ``RATE`` events/s for ``SECONDS`` s (commit →
stored p50/p99).  Every run's stream is read back by ``Nats-Msg-Id``: lost (committed,
never stored) and duplicated (stored more than once) are asserted 0 for the bridge
and reported for the peers.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client
from sqlalchemy.ext.asyncio import create_async_engine

from benchmarks import raw
from benchmarks import relay as ours
from benchmarks.stats import Delivery, check_delivery, median_ratio, percentile
from benchmarks.workload import (
    DeliveryError,
    bench_config,
    create_stream,
    delete_stream,
    envelope,
    messages,
    stored_ids,
)
from bridge.config import BridgeConfig, RelayOptions
from bridge.presets import PRESETS
from bridge.schema import create_all

HERE = Path(__file__).resolve().parent
N = 10_000
RATE = 500.0
SECONDS = 5.0
PRODUCERS = 4
DEADLINE = 300.0
SETTLE = 30.0


@dataclass(frozen=True, slots=True)
class Contender:
    library: str
    setting: str  # "default" | "best"
    runner: str | None  # script in this folder, or None: the bridge, in process
    settings: dict[str, Any]
    described: str  # the settings, as the table shows them

    @property
    def key(self) -> str:
        return f"{self.library.replace('-', '_')}_{self.setting}"


CONTENDERS: tuple[Contender, ...] = (
    Contender("jetstream-bridge", "default", None, {}, "RelayOptions() (batch 256, 256 in flight)"),
    Contender(
        "jetstream-bridge", "best", None, {"preset": "high_throughput"},
        "high_throughput preset (batch 1000, 1024 in flight)",
    ),
    Contender(
        "nats-outbox", "default", "run_nats_outbox.py", {},
        "batch_size 100, polling_interval 1 s",
    ),
    Contender(
        "nats-outbox", "best", "run_nats_outbox.py",
        {"batch_size": 1000, "polling_interval": 0.01},
        "batch_size 1000 (its maximum), polling_interval 10 ms",
    ),
    Contender(
        "faststream-outbox", "default", "run_faststream_outbox.py", {},
        "max_workers 1, fetch_batch_size 10, fetch interval 1-10 s, LISTEN/NOTIFY",
    ),
    Contender(
        "faststream-outbox", "best", "run_faststream_outbox.py",
        {
            "max_workers": 32, "fetch_batch_size": 1000, "terminal_flush_batch_size": 100,
            "min_fetch_interval": 0.01, "max_fetch_interval": 1.0,
        },
        "max_workers 32, fetch_batch_size 1000, terminal_flush_batch_size 100, "
        "fetch interval 10 ms-1 s",
    ),
)  # fmt: skip


@dataclass
class Figures:
    """One contender's results over the rounds."""

    contender: Contender
    drains: list[tuple[float, float]] = field(default_factory=list)  # (raw, drain) per round
    p50_ms: float | None = None
    p99_ms: float | None = None
    steady_rate: float | None = None
    lost: int = 0
    duplicated: int = 0
    checked: int = 0

    def add(self, delivery: Delivery) -> None:
        self.lost += delivery.lost
        self.duplicated += delivery.duplicated
        self.checked += delivery.expected


Fresh = Callable[[], Awaitable[str]]


async def _peer(
    python: str, contender: Contender, spec: dict[str, Any], workdir: Path
) -> dict[str, Any]:
    """Run one peer runner to completion; its result (raises with its output on failure)."""
    assert contender.runner is not None
    spec_path, result_path = workdir / "spec.json", workdir / "result.json"
    spec_path.write_text(json.dumps(spec))
    result_path.unlink(missing_ok=True)
    proc = await asyncio.create_subprocess_exec(
        python, str(HERE / contender.runner), str(spec_path), str(result_path),
        cwd=workdir, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), DEADLINE + 120)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0 or not result_path.exists():
        raise RuntimeError(
            f"{contender.key} runner failed ({proc.returncode}):\n{output.decode(errors='replace')}"
        )
    result: dict[str, Any] = json.loads(result_path.read_text())
    return result


def _our_config(nats_url: str, contender: Contender) -> BridgeConfig:
    cfg = bench_config(nats_url, "peerours")
    if contender.settings.get("preset"):
        return cfg.with_(relay=PRESETS[contender.settings["preset"]]["relay"])
    return cfg.with_(relay=RelayOptions())


async def drain(
    python: str, contender: Contender, nc: Client, nats_url: str, fresh: Fresh, workdir: Path
) -> tuple[float, Delivery]:
    """Events/s of one drain of ``N`` rows onto a fresh stream; what reached it."""
    url = await fresh()
    cfg = _our_config(nats_url, contender)
    await create_stream(nc, cfg)
    try:
        if contender.runner is None:
            engine = create_async_engine(url)
            try:
                await create_all(engine)
                ids: list[str] = []
                rate = await ours._relay_drain(cfg, nc, engine, N, ids)
            finally:
                await engine.dispose()
        else:
            events = [envelope(cfg, i).to_dict() for i in range(N)]
            ids = [e["event_id"] for e in events]
            result = await _peer(
                python,
                contender,
                _spec(cfg, url, contender, "drain", [[e["event_id"], e] for e in events]),
                workdir,
            )
            rate = N / result["elapsed"]
        delivery = check_delivery(ids, await stored_ids(nc, cfg.stream_name, cfg.subjects.publish))
        return rate, delivery
    finally:
        await delete_stream(nc, cfg)


async def steady(
    python: str, contender: Contender, nc: Client, nats_url: str, fresh: Fresh, workdir: Path
) -> tuple[float, float, float, Delivery]:
    """(p50 ms, p99 ms, achieved rate, delivery) of one steady run."""
    url = await fresh()
    cfg = _our_config(nats_url, contender)
    await create_stream(nc, cfg)
    try:
        if contender.runner is None:
            engine = create_async_engine(url, pool_size=PRODUCERS + 4)
            try:
                await create_all(engine, models=[ours.BenchOrg])  # its capture trigger too
                ids: list[str] = []
                figures = {
                    name: value for name, value, _ in await ours._latency(cfg, nc, engine, ids)
                }
            finally:
                await engine.dispose()
            p50 = figures["relay_commit_to_puback_p50_ms"]
            p99 = figures["relay_commit_to_puback_p99_ms"]
            rate = figures["relay_latency_rate"]
        else:
            events = [envelope(cfg, i).to_dict() for i in range(int(RATE * SECONDS))]
            result = await _peer(
                python,
                contender,
                _spec(cfg, url, contender, "steady", [[e["event_id"], e] for e in events]),
                workdir,
            )
            committed, arrived = result["committed"], result["arrived"]
            ids = list(committed)
            ms = [(arrived[i] - at) * 1000 for i, at in committed.items() if i in arrived]
            p50 = percentile(ms, 50) if ms else float("nan")
            p99 = percentile(ms, 99) if ms else float("nan")
            rate = result["rate"]["achieved"]
        delivery = check_delivery(ids, await stored_ids(nc, cfg.stream_name, cfg.subjects.publish))
        return p50, p99, rate, delivery
    finally:
        await delete_stream(nc, cfg)


def _spec(
    cfg: BridgeConfig, url: str, contender: Contender, mode: str, events: list[list[Any]]
) -> dict[str, Any]:
    return {
        "mode": mode,
        "database_url": url,
        "nats_url": cfg.nats_urls[0],
        "stream": cfg.stream_name,
        "subject": cfg.subjects.publish,
        "settings": contender.settings,
        "events": events,
        "rate": RATE,
        "producers": PRODUCERS,
        "deadline": DEADLINE,
        "settle": SETTLE,
    }


async def run(python: str, nats_url: str, fresh: Fresh, rounds: int) -> list[Figures]:
    figures = {c.key: Figures(c) for c in CONTENDERS}
    nc = await nats.connect(nats_url)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
            workdir = Path(tmp)
            for _ in range(rounds):
                cfg = bench_config(nats_url, "peerraw")
                await create_stream(nc, cfg)
                try:
                    base = await raw.publish_async(
                        nc, cfg.stream_name, cfg.subjects.publish, messages(cfg, N)
                    )
                finally:
                    await delete_stream(nc, cfg)
                for contender in CONTENDERS:
                    rate, delivery = await drain(python, contender, nc, nats_url, fresh, workdir)
                    figures[contender.key].drains.append((base, rate))
                    figures[contender.key].add(delivery)
            for contender in CONTENDERS:
                p50, p99, rate, delivery = await steady(
                    python, contender, nc, nats_url, fresh, workdir
                )
                entry = figures[contender.key]
                entry.p50_ms, entry.p99_ms, entry.steady_rate = p50, p99, rate
                entry.add(delivery)
    finally:
        await nc.close()
    for entry in figures.values():
        if entry.contender.runner is None and (entry.lost or entry.duplicated):
            raise DeliveryError(
                f"{entry.contender.key}: {entry.lost} lost, {entry.duplicated} duplicated"
            )
    return list(figures.values())


def ratio(entry: Figures) -> tuple[float, float, float]:
    """(raw events/s, drain events/s, ratio) of the median round."""
    runs = median_ratio(entry.drains)
    base, drained = runs.median_pair
    return base, drained, runs.median
