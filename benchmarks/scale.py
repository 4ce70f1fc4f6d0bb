"""Scale figures: end-to-end throughput with 1 vs 2 instances per side, and how the
per-event cost and the bridge tables grow from 1k to 100k events.

``bench_scale(nats_url, database_url_factory)`` returns ``(name, value, unit)`` lines.

Throughput A→B (separate processes, the services' worker entry points
``python -m services.system_a.worker`` / ``system_b.worker``; relays compete for A's
outbox, consumers share B's durable, all on one database pair):

- ``scale_raw_events_per_s``: the raw baseline in the same run — nats-py publishing
  ``SCALE_EVENTS`` envelopes of the same size (pipelined, PubAcks awaited) while a pull
  subscriber fetches and acks them, no database; until the last ack.
- ``scale_1x1_events_per_s`` / ``scale_2x2_events_per_s``: ``SCALE_EVENTS`` outbox rows
  (``organization.created``, real row snapshots) committed in one transaction on A,
  from that commit until all are applied in B's ``organizations`` table, with 1 worker
  per side and with 2 workers per side.
- ``scale_2x2_vs_1x1`` and ``scale_1x1_vs_raw`` / ``scale_2x2_vs_raw``: the ratios.
  One consumer process (one core for its Python) bounds the 1x1 figure; a second
  process per side can use a second core.  On a 2-core machine the four workers share
  the cores with PostgreSQL and NATS, so the ratio is noisy and capped near 2; below 1
  would mean competing relays or consumers slow each other down.

Cost growth (both bridges in this process, 1 relay + 1 consumer, the relay's outbox
retention and the consumer's inbox retention running with ``RETENTION`` s every
``CLEANUP_INTERVAL`` s): for each size in
``SCALE_SIZES`` a fresh database pair, rows committed in chunks of ``CHUNK`` while the
bridges run, until B has applied them all.

- ``scale_cost_<n>_us_per_event``: wall time per event (relay publish + consumer
  apply, with the producer's inserts in the same process) — flat when cost does not
  grow with the size.
- ``scale_cost_<n>_outbox_peak_rows`` / ``_inbox_peak_rows``: the most rows seen in
  A's outbox / B's inbox during the run (sampled every 0.5 s): bounded by
  rate * (retention + cleanup interval) once n is large enough, not by n.
- ``scale_cost_<n>_outbox_rows_after_retention`` / ``_inbox_rows_after_retention`` and
  ``_outbox_bytes`` / ``_inbox_bytes``: after the cleanups ran
  (``pg_total_relation_size``: deleted rows' space is reused by later rows, not
  returned to the OS, so bytes stay at the table's high-water mark).

Size knobs (environment): ``BENCH_SCALE_EVENTS`` (throughput events, default 5000)
and ``BENCH_SCALE_SIZES`` (comma-separated, default ``1000,10000,100000``).
``BENCH_SCALE_QUICK=1`` is a quick run on a shared machine: 1000 events, sizes
``1000,3000``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import nats
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from benchmarks.services import UrlFactory, _drop, _fresh
from bridge.config import BridgeConfig, ConsumerOptions, RelayOptions
from bridge.envelope import MSG_ID_HEADER
from bridge.outbox import Outbox
from bridge.runtime import Bridge
from bridge.schema import outbox as outbox_table
from services.shared.app import build_bridge
from services.shared.models import Organization
from services.shared.settings import ServiceSettings

Line = tuple[str, float, str]

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 1000
RETENTION = 1.0
CLEANUP_INTERVAL = 2.0
DEADLINE = 900.0
START_TIMEOUT = 60.0


def _sizes() -> tuple[int, list[int]]:
    if os.environ.get("BENCH_SCALE_QUICK"):
        return 1000, [1000, 3000]
    events = int(os.environ.get("BENCH_SCALE_EVENTS", "5000"))
    raw = os.environ.get("BENCH_SCALE_SIZES", "1000,10000,100000")
    return events, [int(s) for s in raw.split(",") if s.strip()]


def _outbox_rows(config: BridgeConfig, start: int, n: int) -> list[dict[str, object]]:
    """``n`` ``organization.created`` outbox rows with real row snapshots."""
    box = Outbox(config)
    now = datetime.now(UTC)
    rows = []
    for i in range(start, start + n):
        org = Organization(
            id=uuid.uuid4(), name=f"Org {i}", domain=f"org{i}.scale.example", active=True,
            created_at=now, updated_at=now, origin=config.app_name, deleted_at=None,
        )  # fmt: skip
        rows.append(box.row_for(box.envelope_for(org, "created")))
    return rows


async def _commit(engine: AsyncEngine, rows: list[dict[str, object]]) -> None:
    async with engine.begin() as conn:
        for start in range(0, len(rows), CHUNK):
            await conn.execute(insert(outbox_table), rows[start : start + CHUNK])


async def _count(engine: AsyncEngine, table: str) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(text(f"SELECT count(*) FROM {table}")) or 0)


async def _wait_applied(engine: AsyncEngine, n: int, started: float) -> float:
    while (await _count(engine, "organizations")) < n:
        if time.perf_counter() - started > DEADLINE:
            raise RuntimeError(f"B did not apply {n} events within {DEADLINE} s")
        await asyncio.sleep(0.02)
    return time.perf_counter() - started


# -- raw baseline ------------------------------------------------------------------------
async def _raw(nats_url: str, config: BridgeConfig, n: int) -> float:
    nc = await nats.connect(nats_url)
    token = uuid.uuid4().hex[:6]
    stream, subject = f"scale-raw-{token}", f"scale_raw_{token}.events"
    try:
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[subject])
        sub = await js.pull_subscribe(subject, durable=f"raw-{token}", stream=stream)
        bodies = [json.dumps(r["payload"]).encode() for r in _outbox_rows(config, 0, n)]
        semaphore = asyncio.Semaphore(256)

        async def publish_one(data: bytes) -> None:
            async with semaphore:
                await js.publish(
                    subject, data, stream=stream, headers={MSG_ID_HEADER: str(uuid.uuid4())}
                )

        async def consume() -> None:
            done = 0
            while done < n:
                with contextlib.suppress(nats.errors.TimeoutError):
                    for msg in await sub.fetch(64, timeout=1.0):
                        await msg.ack()
                        done += 1
            await nc.flush()

        started = time.perf_counter()
        consumer = asyncio.create_task(consume())
        await asyncio.gather(*(publish_one(b) for b in bodies))
        await asyncio.wait_for(consumer, DEADLINE)
        elapsed = time.perf_counter() - started
        await js.delete_stream(stream)
        return n / elapsed
    finally:
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


# -- cost growth -------------------------------------------------------------------------
@asynccontextmanager
async def _bridge(
    name: str, peer: str, url: str, nats_url: str, stream: str
) -> AsyncIterator[Bridge]:
    settings = ServiceSettings(app_name=name, destination_app=peer, database_url=url,
                               nats_url=nats_url, stream_name=stream)  # fmt: skip
    config = settings.to_bridge_config(
        env={},
        relay=RelayOptions(retention=RETENTION, cleanup_interval=CLEANUP_INTERVAL),
        consumer=ConsumerOptions(
            fetch_timeout=0.5,
            inbox_retention=RETENTION,
            inbox_cleanup_interval=CLEANUP_INTERVAL,
            # the services' handlers are last-writer-wins: a 1 s inbox is safe here
            allow_short_inbox_retention=True,
        ),
    )
    engine = create_async_engine(url, pool_size=10)
    bridge = build_bridge(config, engine)
    await bridge.start()
    try:
        yield bridge
    finally:
        await bridge.stop(15.0)
        await engine.dispose()


async def _table_size(engine: AsyncEngine, table: str) -> tuple[int, int]:
    async with engine.connect() as conn:
        rows = int(await conn.scalar(text(f"SELECT count(*) FROM {table}")) or 0)
        size = int(await conn.scalar(text(f"SELECT pg_total_relation_size('{table}')")) or 0)
    return rows, size


async def _cost(nats_url: str, factory: UrlFactory, created: list[str], n: int) -> list[Line]:
    token = uuid.uuid4().hex[:6]
    a_name, b_name, stream = f"cost_a{token}", f"cost_b{token}", f"cost-{token}"
    url_a, url_b = await _fresh(factory, created), await _fresh(factory, created)
    async with AsyncExitStack() as stack:
        bridge_a = await stack.enter_async_context(_bridge(a_name, b_name, url_a, nats_url, stream))
        await stack.enter_async_context(_bridge(b_name, a_name, url_b, nats_url, stream))
        engine_a, engine_b = create_async_engine(url_a), create_async_engine(url_b)
        stack.push_async_callback(engine_a.dispose)
        stack.push_async_callback(engine_b.dispose)
        peak_outbox = peak_inbox = 0
        done = asyncio.Event()

        async def sample() -> None:
            nonlocal peak_outbox, peak_inbox
            while not done.is_set():
                peak_outbox = max(peak_outbox, await _count(engine_a, "bridge_outbox"))
                peak_inbox = max(peak_inbox, await _count(engine_b, "bridge_inbox"))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), 0.5)

        sampler = asyncio.create_task(sample())
        started = time.perf_counter()
        for start in range(0, n, CHUNK):
            await _commit(engine_a, _outbox_rows(bridge_a.config, start, min(CHUNK, n - start)))
        elapsed = await _wait_applied(engine_b, n, started)
        done.set()
        await sampler
        # Let both retentions run (rows older than RETENTION, every CLEANUP_INTERVAL).
        await asyncio.sleep(RETENTION + CLEANUP_INTERVAL + 1.0)
        outbox_rows, outbox_bytes = await _table_size(engine_a, "bridge_outbox")
        inbox_rows, inbox_bytes = await _table_size(engine_b, "bridge_inbox")
    prefix = f"scale_cost_{n}"
    return [
        (f"{prefix}_us_per_event", round(elapsed / n * 1e6, 1), "us/event"),
        (f"{prefix}_outbox_peak_rows", float(peak_outbox), "rows"),
        (f"{prefix}_outbox_rows_after_retention", float(outbox_rows), "rows"),
        (f"{prefix}_outbox_bytes", round(outbox_bytes / 1024, 1), "KiB"),
        (f"{prefix}_inbox_peak_rows", float(peak_inbox), "rows"),
        (f"{prefix}_inbox_rows_after_retention", float(inbox_rows), "rows"),
        (f"{prefix}_inbox_bytes", round(inbox_bytes / 1024, 1), "KiB"),
    ]


async def bench_scale(nats_url: str, database_url_factory: UrlFactory) -> list[Line]:
    events, sizes = _sizes()
    created: list[str] = []
    results: list[Line] = []
    try:
        config = ServiceSettings(app_name="scale_raw", destination_app="peer").to_bridge_config(
            env={}
        )
        raw = await _raw(nats_url, config, events)
        with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
            one = await _throughput(nats_url, database_url_factory, created, events, 1, Path(tmp))
            two = await _throughput(nats_url, database_url_factory, created, events, 2, Path(tmp))
        results += [
            ("scale_events", float(events), "events"),
            ("scale_raw_events_per_s", round(raw, 1), "events/s"),
            ("scale_1x1_events_per_s", round(one, 1), "events/s"),
            ("scale_2x2_events_per_s", round(two, 1), "events/s"),
            ("scale_2x2_vs_1x1", round(two / one, 3), "ratio"),
            ("scale_1x1_vs_raw", round(one / raw, 3), "ratio"),
            ("scale_2x2_vs_raw", round(two / raw, 3), "ratio"),
        ]
        for n in sizes:
            results += await _cost(nats_url, database_url_factory, created, n)
    finally:
        await _drop(created)
    return results


def main() -> int:
    from bridge.testing import NatsServer, PostgresServer

    async def run() -> list[Line]:
        nats_server = NatsServer().start()
        postgres = PostgresServer()
        try:
            return await bench_scale(nats_server.url, postgres.create_database)
        finally:
            nats_server.cleanup()
            postgres.cleanup()

    for name, value, unit in asyncio.run(run()):
        print(f"bench {name} {value:.4g} {unit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
