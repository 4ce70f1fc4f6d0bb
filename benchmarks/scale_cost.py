"""Cost growth: does the per-event cost of the bridge stay flat from 1k to 100k events?

``python -m benchmarks scale_cost`` (its own entry, so the throughput figures of
:mod:`benchmarks.scale` are printed even if a long cost run fails).  Sizes:
``BENCH_SCALE_SIZES`` (default ``1000,10000,100000``; ``BENCH_SCALE_QUICK=1``: 1000,3000).

Both bridges in this process (the services' ``build_bridge``: 1 relay + 1 consumer per
side), the relay's outbox retention and the consumer's inbox retention running with
``RETENTION`` s every ``CLEANUP_INTERVAL`` s.  For each size ``n`` in ``SCALE_SIZES`` a
fresh database pair; ``n`` outbox rows committed in chunks of ``CHUNK`` as fast as the
producer can while the bridges run, until B has applied them all.  All sizes run once
per round, ``BENCH_RUNS`` (3) rounds, so a slow moment hits one size of one round.

- ``scale_cost_<n>_us_per_event``: wall time per event (relay publish + consumer
  apply, with the producer's inserts in the same process), the median round's;
- ``scale_cost_<largest>_vs_<next>_ratio`` (``scale_cost_100000_vs_10000_ratio`` by
  default): per-event cost at the largest size over the next smaller one, median of
  the rounds' ratios — 1.0 is flat.  Bound: one process (one core) for producer,
  relay and consumer; at 100k the relay works through a backlog of tens of thousands
  of pending rows, so this figure is also the claim's cost with a large backlog;
- ``scale_cost_<n>_outbox_peak_rows`` / ``_inbox_peak_rows``: the most rows seen in
  A's outbox / B's inbox during the last round (sampled every 0.5 s): bounded by
  rate * (retention + cleanup interval) once n is large enough, not by n;
- ``scale_cost_<n>_outbox_rows_after_retention`` / ``_inbox_rows_after_retention`` and
  ``_outbox_bytes`` / ``_inbox_bytes``: after the cleanups ran
  (``pg_total_relation_size``: deleted rows' space is reused by later rows, not
  returned to the OS, so bytes stay at the table's high-water mark).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from benchmarks.scale import _commit, _count, _outbox_rows, _sizes, _wait_applied
from benchmarks.services import UrlFactory, _drop, _fresh
from benchmarks.stats import Line, median_ratio
from benchmarks.workload import runs
from bridge.config import ConsumerOptions, RelayOptions
from bridge.runtime import Bridge
from services.shared.app import build_bridge
from services.shared.settings import ServiceSettings

CHUNK = 1000
RETENTION = 1.0
CLEANUP_INTERVAL = 2.0


@asynccontextmanager
async def _bridge(
    name: str, peer: str, url: str, nats_url: str, stream: str
) -> AsyncIterator[Bridge]:
    settings = ServiceSettings(app_name=name, destination_app=peer, database_url=url)
    config = settings.to_bridge_config(
        env={"NATS_URL": nats_url, "STREAM_NAME": stream},
        relay=RelayOptions(retention=RETENTION, cleanup_interval=CLEANUP_INTERVAL),
        consumer=ConsumerOptions(
            fetch_timeout=0.5,
            inbox_retention=RETENTION,
            inbox_cleanup_interval=CLEANUP_INTERVAL,
            # the services' handlers are last-writer-wins: a short inbox is safe here
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


async def bench_scale_cost(nats_url: str, factory: UrlFactory) -> list[Line]:
    """All sizes once per round; per-size figures of the median round, and the ratio."""
    sizes = _sizes()[1]
    created: list[str] = []
    per_round: list[dict[int, list[Line]]] = []
    try:
        for _ in range(runs()):
            round_lines: dict[int, list[Line]] = {}
            for n in sizes:
                round_lines[n] = await _cost(nats_url, factory, created, n)
                await _drop(created)  # 100k rows per side: free the space between runs
                created.clear()
            per_round.append(round_lines)
    finally:
        await _drop(created)
    lines: list[Line] = []
    cost = {
        n: [
            dict((name, v) for name, v, _ in r[n])[f"scale_cost_{n}_us_per_event"]
            for r in per_round
        ]
        for n in sizes
    }
    last = per_round[-1]
    for n in sizes:
        ordered = sorted(cost[n])
        median_us = ordered[(len(ordered) - 1) // 2]
        lines.append((f"scale_cost_{n}_us_per_event", median_us, "us/event"))
        lines += [line for line in last[n] if not line[0].endswith("_us_per_event")]
    if len(sizes) >= 2:
        big, ref = sorted(sizes)[-1], sorted(sizes)[-2]
        ratio = median_ratio(zip(cost[ref], cost[big], strict=True))
        name = f"scale_cost_{big}_vs_{ref}_ratio"
        lines += [
            (name, round(ratio.median, 3), "ratio"),
            (f"{name}_spread", round(ratio.spread, 3), f"ratio over {len(ratio.pairs)} runs"),
        ]
    return lines
