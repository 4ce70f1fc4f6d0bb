"""Many writers at once: 8 connections x 5,000 ids on one database, and two systems
writing at the same time — no id twice, and each writer's ids keep increasing."""

from __future__ import annotations

import asyncio
import itertools

import asyncpg
from ids_support import connect, install_with_system

from bridge import ids
from bridge.testing import PostgresServer

ROUNDS = 10
PER_ROUND = 500


async def _writer(url: str, worker: int) -> list[list[int]]:
    """ROUNDS transactions of PER_ROUND ids, alternately inserted into ``items`` (its
    primary key checks uniqueness too) and selected (in the order they were issued)."""
    conn: asyncpg.Connection = await connect(url)
    try:
        rounds: list[list[int]] = []
        for number in range(ROUNDS):
            async with conn.transaction():
                if number % 2:
                    rows = await conn.fetch(
                        "INSERT INTO items (worker) SELECT $1 FROM generate_series(1, $2) "
                        "RETURNING id",
                        worker,
                        PER_ROUND,
                    )
                    rounds.append(sorted(row["id"] for row in rows))
                else:
                    rows = await conn.fetch(
                        "SELECT bridge_next_id() AS id FROM generate_series(1, $1)", PER_ROUND
                    )
                    issued = [row["id"] for row in rows]
                    assert all(a < b for a, b in itertools.pairwise(issued))
                    rounds.append(issued)
        return rounds
    finally:
        await conn.close()


async def _prepare(url: str, system: int) -> None:
    await install_with_system(url, system)
    conn = await connect(url)
    try:
        await conn.execute(
            "CREATE TABLE items (id bigint PRIMARY KEY DEFAULT bridge_next_id(), worker int)"
        )
    finally:
        await conn.close()


def _check_writer(rounds: list[list[int]]) -> None:
    # A writer's later transaction only gets greater ids: strictly increasing per system.
    for earlier, later in itertools.pairwise(rounds):
        assert max(earlier) < min(later)


async def test_eight_connections_never_get_the_same_id(database_url: str) -> None:
    await _prepare(database_url, 5)
    results = await asyncio.gather(*(_writer(database_url, worker) for worker in range(8)))
    everything = [i for rounds in results for batch in rounds for i in batch]
    assert len(everything) == 8 * ROUNDS * PER_ROUND == 40_000
    assert len(set(everything)) == len(everything)
    assert {ids.decode(i).system for i in everything} == {5}
    for rounds in results:
        _check_writer(rounds)


async def test_two_systems_writing_at_once_never_collide(
    database_url: str, postgres: PostgresServer
) -> None:
    other_url = await postgres.create_database()
    try:
        await _prepare(database_url, 1)
        await _prepare(other_url, 2)
        results = await asyncio.gather(
            *(_writer(database_url, worker) for worker in range(4)),
            *(_writer(other_url, worker) for worker in range(4)),
        )
        by_system: dict[int, list[int]] = {1: [], 2: []}
        for rounds in results:
            _check_writer(rounds)
            for batch in rounds:
                for value in batch:
                    by_system[ids.decode(value).system].append(value)
        assert len(by_system[1]) == len(by_system[2]) == 4 * ROUNDS * PER_ROUND
        union = by_system[1] + by_system[2]
        assert len(set(union)) == len(union) == 40_000
    finally:
        await postgres.drop_database(other_url)
