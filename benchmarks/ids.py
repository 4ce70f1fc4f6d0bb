"""What ``bridge_next_id()`` costs (bridge.ids, docs/IDENTITIES.md).

- ``ids_next_id_per_s_1conn`` / ``ids_next_id_per_s_8conn``: ids per second from one
  connection and from 8 at once (``SELECT bridge_next_id() FROM generate_series(1,
  1000)``); the generator's session lock serializes the 8, so this is the database's
  ceiling, not a per-connection figure;
- ``ids_insert_vs_bigserial_ratio``: rows per second inserted by 8 connections (500 rows
  per transaction, one ``bigint`` key and a short text) with the key from
  ``bridge_next_id()``, over the same with a plain ``bigserial`` — the baseline: the
  fastest correct way to give rows a key without the scheme's guarantees.  Median of
  interleaved rounds (:mod:`benchmarks.stats`).
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
from sqlalchemy.ext.asyncio import create_async_engine

from benchmarks.stats import Line, interleaved, median_ratio, ratio_lines
from benchmarks.workload import runs
from bridge import ids
from bridge.testing.servers import to_plain_url

CONNECTIONS = 8
IDS_PER_CONNECTION = 20_000
ROWS_PER_CONNECTION = 10_000
ROWS_PER_TRANSACTION = 500


async def _rate(url: str, connections: int, sql: str, per_connection: int, per_call: int) -> float:
    conns = [await asyncpg.connect(url) for _ in range(connections)]
    try:

        async def worker(conn: asyncpg.Connection) -> None:
            for _ in range(per_connection // per_call):
                await conn.execute(sql)

        started = time.perf_counter()
        await asyncio.gather(*(worker(conn) for conn in conns))
        return connections * per_connection / (time.perf_counter() - started)
    finally:
        for conn in conns:
            await conn.close()


async def bench_ids(nats_url: str, database_url: str) -> list[Line]:
    del nats_url  # the generator needs no NATS
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            await ids.install(conn)
            await ids.set_system_number(conn, 1)
    finally:
        await engine.dispose()
    url = to_plain_url(database_url)
    setup = await asyncpg.connect(url)
    try:
        await setup.execute(
            "CREATE TABLE bench_generated (id bigint PRIMARY KEY DEFAULT bridge_next_id(), "
            "name text NOT NULL);"
            "CREATE TABLE bench_serial (id bigserial PRIMARY KEY, name text NOT NULL)"
        )
    finally:
        await setup.close()

    take = f"SELECT bridge_next_id() FROM generate_series(1, {1000})"
    one = await _rate(url, 1, take, IDS_PER_CONNECTION, 1000)
    many = await _rate(url, CONNECTIONS, take, IDS_PER_CONNECTION, 1000)

    def insert(table: str) -> str:
        return (
            f"INSERT INTO {table} (name) "
            f"SELECT 'row ' || i FROM generate_series(1, {ROWS_PER_TRANSACTION}) AS i"
        )

    async def serial() -> float:
        sql = insert("bench_serial")
        return await _rate(url, CONNECTIONS, sql, ROWS_PER_CONNECTION, ROWS_PER_TRANSACTION)

    async def generated() -> float:
        sql = insert("bench_generated")
        return await _rate(url, CONNECTIONS, sql, ROWS_PER_CONNECTION, ROWS_PER_TRANSACTION)

    rounds = await interleaved(runs(), serial, generated)
    return [
        ("ids_next_id_per_s_1conn", round(one), "ids/s"),
        (f"ids_next_id_per_s_{CONNECTIONS}conn", round(many), "ids/s"),
        *ratio_lines(
            "ids_insert_vs_bigserial_ratio",
            median_ratio((base, ours) for base, ours in rounds),
            base="ids_insert_bigserial_rows_per_s",
            ours="ids_insert_generated_rows_per_s",
            unit="rows/s",
        ),
    ]
