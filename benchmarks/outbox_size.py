"""What an outbox row costs on disk, with a realistic backlog.

``BACKLOG`` (50 000) outbox rows of the workload (:mod:`benchmarks.workload`: ~300 B
payload in its envelope) are committed into a fresh ``bridge_outbox`` in chunks of
1000 — what a burst of writes or a NATS outage leaves behind — then the relay
(``high_throughput`` options) publishes them all.

- ``outbox_bytes_per_row``: ``pg_total_relation_size('bridge_outbox')`` (heap, TOAST
  and every index) / rows, with the backlog pending;
- ``outbox_index_bytes_per_row``: the indexes' share of it (``pg_indexes_size``);
- ``outbox_bytes_per_row_sent``: the same after the relay marked every row sent (rows
  stay until ``relay.retention``); the growth over the pending figure is the dead
  tuples and index entries the mark-sent updates left until autovacuum;
- ``outbox_payload_bytes``: the envelope body's size, for scale.

Not a timing: it depends on the schema (columns, indexes) and PostgreSQL's page
layout, not on the machine's load.
"""

from __future__ import annotations

import asyncio
import time

import nats
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from benchmarks.stats import Line
from benchmarks.workload import bench_config, create_stream, delete_stream, envelope
from bridge.outbox.capture import Outbox
from bridge.outbox.relay import OutboxRelay
from bridge.presets import PRESETS
from bridge.schema import create_all
from bridge.schema import outbox as outbox_table
from bridge.transport.publisher import Publisher

BACKLOG = 50_000
CHUNK = 1000
DEADLINE = 300.0


async def _size(engine: AsyncEngine) -> tuple[int, int, int]:
    """(rows, total bytes, index bytes) of ``bridge_outbox``."""
    async with engine.connect() as conn:
        rows = int(await conn.scalar(text("SELECT count(*) FROM bridge_outbox")) or 0)
        total = int(await conn.scalar(text("SELECT pg_total_relation_size('bridge_outbox')")) or 0)
        index = int(await conn.scalar(text("SELECT pg_indexes_size('bridge_outbox')")) or 0)
    return rows, total, index


async def bench_outbox(nats_url: str, database_url: str) -> list[Line]:
    cfg = bench_config(nats_url, "size")
    cfg = cfg.with_(relay=PRESETS["high_throughput"]["relay"])
    engine = create_async_engine(database_url)
    nc = await nats.connect(nats_url)
    try:
        await create_all(engine)
        await create_stream(nc, cfg)
        box = Outbox(cfg)
        body_bytes = 0
        for start in range(0, BACKLOG, CHUNK):
            envelopes = [envelope(cfg, i) for i in range(start, min(BACKLOG, start + CHUNK))]
            body_bytes = len(envelopes[0].to_bytes())
            async with engine.begin() as conn:
                await conn.execute(insert(outbox_table), [box.row_for(e) for e in envelopes])
        rows, total, index = await _size(engine)
        relay = OutboxRelay(cfg, engine, Publisher(nc.jetstream(), stream=cfg.stream_name))
        started = time.perf_counter()
        await relay.start()
        try:
            while relay.published_total < BACKLOG:
                if time.perf_counter() - started > DEADLINE:
                    raise RuntimeError(f"relay published {relay.published_total} of {BACKLOG}")
                await asyncio.sleep(0.05)
        finally:
            await relay.stop(10.0)
        sent_rows, sent_total, _ = await _size(engine)
        return [
            ("outbox_backlog_rows", float(rows), "rows"),
            ("outbox_bytes_per_row", round(total / rows, 1), "B/row"),
            ("outbox_index_bytes_per_row", round(index / rows, 1), "B/row"),
            ("outbox_bytes_per_row_sent", round(sent_total / sent_rows, 1), "B/row"),
            ("outbox_payload_bytes", float(body_bytes), "B envelope body"),
        ]
    finally:
        await delete_stream(nc, cfg)
        await nc.close()
        await engine.dispose()
