"""The relay claim's plan and cost as a backlog drains (evidence for docs/BENCHMARKS.md).

``python -m benchmarks.claim_plan [rows] [drained] [fillfactor]`` (defaults 60 000,
44 000 and 100, the schema's since migration 0013; 70 shows the layout of 0009):
commits ``rows`` outbox rows of the scale workload (one record each, 1000 per
transaction, like :mod:`benchmarks.scale_cost`), then drains ``drained`` of them with
the relay's own SQL (:class:`~bridge.outbox._store.OutboxStore` claim + mark sent,
1000 per claim; no NATS — publishing is not what is measured), and prints:

- ``EXPLAIN (ANALYZE, BUFFERS)`` of one 1000-row claim before the drain, and after it
  both from the start of the due index (what every claim did before the claim cursor,
  :mod:`bridge.outbox._cursor`) and from the cursor's position;
- ``pg_stat_user_tables`` (live, dead, updates, HOT updates, autovacuums, bytes) and
  ``pg_stat_user_indexes`` (scans, entries read, bytes) of the outbox;
- the median claim time of the first and of the last ten claims of the drain.

The claims run in rolled-back transactions for the EXPLAIN (nothing is leased by it).
Run on a fresh PostgreSQL from :mod:`bridge.testing`; autovacuum may run meanwhile
(its count is printed).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from benchmarks.scale import _commit, _outbox_rows
from benchmarks.workload import bench_config
from bridge.outbox import _store
from bridge.outbox._store import CLAIM_LOCK_KEY, LIVENESS_LOCK_CLASS, OutboxStore
from bridge.schema import create_all
from bridge.testing import PostgresServer

BATCH = 1000

_TABLE_STATS = text(
    "SELECT n_live_tup, n_dead_tup, n_tup_upd, n_tup_hot_upd, autovacuum_count, "
    "pg_total_relation_size('bridge_outbox') FROM pg_stat_user_tables "
    "WHERE relname = 'bridge_outbox'"
)
_PENDING = "SELECT count(*) FROM bridge_outbox WHERE status = 'pending'"
_INDEX_STATS = text(
    "SELECT indexrelname, idx_scan, idx_tup_read, idx_tup_fetch, "
    "pg_relation_size(indexrelid) FROM pg_stat_user_indexes "
    "WHERE relname = 'bridge_outbox' ORDER BY indexrelname"
)


async def _explain(conn: AsyncConnection, after: Any) -> str:
    await conn.execute(_store._LOCK, {"key": CLAIM_LOCK_KEY})
    after_at, after_id = after or (_store._START, 0)
    plan = await conn.execute(
        text("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + str(_store._CLAIM.text)),
        {
            "limit": BATCH,
            "owner": "explain",
            "lease": 30.0,
            "live_class": LIVENESS_LOCK_CLASS,
            "after_at": after_at,
            "after_id": after_id,
        },
    )
    return "\n".join(str(line) for (line,) in plan)


async def _stats(engine: AsyncEngine) -> str:
    await asyncio.sleep(0.7)  # the statistics collector reports with a short delay
    async with engine.connect() as conn:
        table = (await conn.execute(_TABLE_STATS)).one()
        indexes = (await conn.execute(_INDEX_STATS)).all()
        pending = await conn.scalar(text(_PENDING))
    lines = [
        f"pending rows: {pending}",
        "table: live={} dead={} updated={} hot_updated={} autovacuums={} bytes={}".format(*table),
    ]
    lines += ["  index {}: scans={} read={} fetched={} bytes={}".format(*i) for i in indexes]
    return "\n".join(lines)


async def _plan(engine: AsyncEngine, title: str, after: Any) -> None:
    async with engine.connect() as conn:
        transaction = await conn.begin()
        print(f"==== {title}\n{await _explain(conn, after)}")
        await transaction.rollback()


async def main(rows: int, drained: int, fillfactor: int) -> None:
    postgres = PostgresServer()
    url = await postgres.create_database()
    engine = create_async_engine(url)
    try:
        await create_all(engine)
        async with engine.begin() as conn:
            await conn.execute(text(f"ALTER TABLE bridge_outbox SET (fillfactor = {fillfactor})"))
        config = bench_config("nats://unused:4222", "claimplan")
        for start in range(0, rows, 10_000):
            await _commit(engine, _outbox_rows(config, start, min(10_000, rows - start)))
        async with engine.begin() as conn:
            await conn.execute(text("ANALYZE bridge_outbox"))
        print(f"fillfactor {fillfactor}\n{await _stats(engine)}")
        await _plan(engine, f"claim of {BATCH}, {rows} pending, nothing drained", None)
        store = OutboxStore(engine, owner="drain", lease=30.0, max_attempts=5)
        took: list[float] = []
        done = 0
        while done < drained:
            started = time.perf_counter()
            claimed = await store.claim(BATCH)
            took.append(time.perf_counter() - started)
            await store.settle([(row.id, row.id) for row in claimed], [], [])
            done += len(claimed)
        first, last = statistics.median(took[:10]), statistics.median(took[-10:])
        print(f"drained {done}: median claim, first 10 {first * 1e3:.1f} ms, last 10 ", end="")
        print(f"{last * 1e3:.1f} ms")
        print(await _stats(engine))
        # the cursor's claim first: the other one's rolled-back leases would sit after it
        await _plan(engine, f"after draining {done}: from the cursor", store.cursor.position)
        await _plan(engine, f"after draining {done}: from the start of the due index", None)
        print(await _stats(engine))
    finally:
        await engine.dispose()
        await postgres.drop_database(url)
        postgres.cleanup()


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:4]]
    asyncio.run(main(*(args + [60_000, 44_000, 100][len(args) :])))
