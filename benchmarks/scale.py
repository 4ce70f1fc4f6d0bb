"""Scale figures: end-to-end throughput against the raw end-to-end way, 1 vs 2 instances
per side, and (:mod:`benchmarks.scale_cost`) the per-event cost from 1k to 100k events.

``bench_scale(nats_url, database_url_factory)`` returns ``(name, value, unit)`` lines.

Throughput A→B (separate processes, the services' worker entry points
``python -m services.system_a.worker`` / ``system_b.worker``; relays compete for A's
outbox, consumers share B's durable, all on one database pair).  Each of
``BENCH_RUNS`` (3) rounds runs the raw way, 1x1 and 2x2, one after the other:

- ``scale_raw_events_per_s``: :func:`benchmarks.raw.end_to_end` — the same
  ``SCALE_EVENTS`` envelope bodies committed into a table on A (asyncpg), then relayed
  by chunks with ``publish_async`` (PubAcks checked, rows marked sent) while a pull
  consumer upserts each fetched batch on B (asyncpg, one statement) and acks: the
  bridge's work without the bridge, batched as the services' workers batch (chunks of
  their ``relay.batch_size``, fetches of their ``consumer.batch_size``);
- ``scale_1x1_events_per_s`` / ``scale_2x2_events_per_s``: ``SCALE_EVENTS`` outbox rows
  (``organization.created``, real row snapshots) committed in one transaction on A,
  from that commit until all are applied in B's ``organizations`` table, with 1 worker
  per side and with 2 workers per side;
- ``e2e_1x1_vs_raw_ratio``, ``scale_2x2_vs_1x1``, ``scale_2x2_vs_raw``: median of the
  rounds' ratios (``*_spread``: how far the rounds disagreed).  Bound: the raw way is
  one Python process for both ends; 1x1 runs two worker processes (A's relay, B's
  consumer), so it may use both cores and beat raw; one consumer process (one core for
  its Python) bounds 1x1, and on 2 cores the four 2x2 workers share the cores with
  PostgreSQL and NATS, so ``scale_2x2_vs_1x1`` is capped near 2 and noisy; below 1
  would mean competing relays or consumers slow each other down.

Size knobs (environment): ``BENCH_SCALE_EVENTS`` (throughput events, default 5000)
and ``BENCH_SCALE_SIZES`` (comma-separated, default ``1000,10000,100000``).
``BENCH_SCALE_QUICK=1`` is a quick run on a shared machine: 1000 events, sizes
``1000,3000``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import nats
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from benchmarks import raw
from benchmarks.services import UrlFactory, _drop, _fresh
from benchmarks.stats import Line, interleaved, median_ratio, ratio_lines
from benchmarks.workload import bench_config, create_stream, delete_stream, runs
from bridge.config import BridgeConfig
from bridge.envelope import Envelope, format_timestamp
from bridge.ids import compose
from bridge.outbox.capture import Outbox
from bridge.schema import outbox as outbox_table
from services.shared.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 1000
DEADLINE = 900.0
DEADLINE_PER_EVENT = 0.02
START_TIMEOUT = 60.0


def _sizes() -> tuple[int, list[int]]:
    if os.environ.get("BENCH_SCALE_QUICK"):
        return 1000, [1000, 3000]
    events = int(os.environ.get("BENCH_SCALE_EVENTS", "5000"))
    raw = os.environ.get("BENCH_SCALE_SIZES", "1000,10000,100000")
    return events, [int(s) for s in raw.split(",") if s.strip()]


def _envelopes(config: BridgeConfig, start: int, n: int) -> list[Envelope]:
    """``n`` ``organization.created`` envelopes with row snapshots as capture writes them."""
    stamp = format_timestamp(datetime.now(UTC))
    envelopes = []
    first = compose(datetime.now(UTC), 0, 9)  # a third system's ids, one per tick, rising
    for i in range(start, start + n):
        org_id = first + 64 * i
        payload = {
            "id": org_id, "name": f"Org {i}", "domain": f"org{i}.scale.example", "active": True,
            "created_at": stamp, "updated_at": stamp, "origin": config.app_name,
            "deleted_at": None,
        }  # fmt: skip
        envelopes.append(
            Envelope(
                event_type="organization.created",
                producer=config.app_name,
                resource_type="organization",
                resource_id=str(org_id),
                payload=payload,
                schema_version=2,
            )
        )
    return envelopes


def _outbox_rows(config: BridgeConfig, start: int, n: int) -> list[dict[str, object]]:
    """The outbox rows of :func:`_envelopes`."""
    box = Outbox(config)
    return [box.row_for(e) for e in _envelopes(config, start, n)]


async def _commit(engine: AsyncEngine, rows: list[dict[str, object]]) -> None:
    async with engine.begin() as conn:
        for start in range(0, len(rows), CHUNK):
            await conn.execute(insert(outbox_table), rows[start : start + CHUNK])


async def _count(engine: AsyncEngine, table: str) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(text(f"SELECT count(*) FROM {table}")) or 0)


async def _wait_applied(engine: AsyncEngine, n: int, started: float) -> float:
    # Long enough for 100k events at ~9 ms each (a loaded 2-core machine), not forever.
    deadline = max(DEADLINE, n * DEADLINE_PER_EVENT)
    while (await _count(engine, "organizations")) < n:
        if time.perf_counter() - started > deadline:
            raise RuntimeError(f"B did not apply {n} events within {deadline:.0f} s")
        await asyncio.sleep(0.02)
    return time.perf_counter() - started


# -- raw baseline ------------------------------------------------------------------------
async def _raw(nats_url: str, factory: UrlFactory, created: list[str], n: int) -> float:
    """:func:`benchmarks.raw.end_to_end` on a fresh database pair and stream, with the
    same envelope bodies the bridge run publishes."""
    url_a, url_b = await _fresh(factory, created), await _fresh(factory, created)
    cfg = bench_config(nats_url, "scaleraw")
    envelopes = _envelopes(cfg, 0, n)
    # batched the same way as the services' workers: their relay's and consumer's batches
    services = ServiceSettings(app_name="a", destination_app="b").to_bridge_config(env={})
    nc = await nats.connect(nats_url)
    try:
        await create_stream(nc, cfg)
        return await raw.end_to_end(
            nc,
            url_a,
            url_b,
            cfg.stream_name,
            cfg.subjects.publish,
            [(e.event_id, e.to_bytes()) for e in envelopes],
            chunk=services.relay.batch_size,
            batch=services.consumer.batch_size,
        )
    finally:
        await delete_stream(nc, cfg)
        await nc.close()


# -- worker processes --------------------------------------------------------------------
class Worker:
    """One ``python -m services.<system>.worker`` process (relay + consumer, no HTTP)."""

    def __init__(self, system: str, env: dict[str, str], log: Path) -> None:
        self.system, self.env, self.log = system, env, log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("wb") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", f"services.{self.system}.worker",
                cwd=ROOT, env=self.env, stdout=out, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
        started = time.perf_counter()
        while "worker running" not in self.log.read_text(errors="replace"):
            if self.proc.returncode is not None or time.perf_counter() - started > START_TIMEOUT:
                raise RuntimeError(f"{self.system} worker did not start: {self.log.read_text()}")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), 20.0)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


async def _throughput(
    nats_url: str, factory: UrlFactory, created: list[str], n: int, replicas: int, tmp: Path
) -> float:
    token = uuid.uuid4().hex[:6]
    a_name, b_name, stream = f"scale_a{token}", f"scale_b{token}", f"scale-{token}"
    url_a, url_b = await _fresh(factory, created), await _fresh(factory, created)
    base = {
        **os.environ,
        "NATS_URL": nats_url,
        "STREAM_NAME": stream,
        "CONSUMER_MODE": "pull",
        "LOG_LEVEL": "INFO",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
    }
    env_a = {"APP_NAME": a_name, "DESTINATION_APP": b_name, "DATABASE_URL": url_a}
    env_b = {"APP_NAME": b_name, "DESTINATION_APP": a_name, "DATABASE_URL": url_b}
    sides = (("system_a", {**base, **env_a}), ("system_b", {**base, **env_b}))
    config = ServiceSettings(app_name=a_name, destination_app=b_name).to_bridge_config(env={})
    rows = _outbox_rows(config, 0, n)
    engine_a, engine_b = create_async_engine(url_a), create_async_engine(url_b)
    workers: list[Worker] = []
    try:
        # One at a time: the first one provisions the stream and the durables.
        for i in range(replicas):
            for system, env in sides:
                worker = Worker(system, env, tmp / f"{system}-{token}-{i}.log")
                workers.append(worker)
                await worker.start()
        await _commit(engine_a, rows)
        # From the commit: the relays wake on its NOTIFY.
        started = time.perf_counter()
        elapsed = await _wait_applied(engine_b, n, started)
        return n / elapsed
    finally:
        await asyncio.gather(*(w.stop() for w in workers))
        await engine_a.dispose()
        await engine_b.dispose()


async def bench_scale(nats_url: str, database_url_factory: UrlFactory) -> list[Line]:
    events = _sizes()[0]
    created: list[str] = []
    results: list[Line] = [("scale_events", float(events), "events")]
    try:
        with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:

            async def raw_run() -> float:
                return await _raw(nats_url, database_url_factory, created, events)

            async def one_run() -> float:
                return await _throughput(
                    nats_url, database_url_factory, created, events, 1, Path(tmp)
                )

            async def two_run() -> float:
                return await _throughput(
                    nats_url, database_url_factory, created, events, 2, Path(tmp)
                )

            rounds = await interleaved(runs(), raw_run, one_run, two_run)
        results += ratio_lines(
            "e2e_1x1_vs_raw_ratio",
            median_ratio((r, one) for r, one, _ in rounds),
            base="scale_raw_events_per_s",
            ours="scale_1x1_events_per_s",
            unit="events/s",
        )
        results += ratio_lines(
            "scale_2x2_vs_1x1",
            median_ratio((one, two) for _, one, two in rounds),
            base="scale_2x2_base_1x1_events_per_s",
            ours="scale_2x2_events_per_s",
            unit="events/s",
        )
        results += ratio_lines(
            "scale_2x2_vs_raw",
            median_ratio((r, two) for r, _, two in rounds),
            base="scale_2x2_base_raw_events_per_s",
            ours=None,
            unit="events/s",
        )
    finally:
        await _drop(created)
    return results
