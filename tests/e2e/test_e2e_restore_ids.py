"""Ids under concurrency and a restore (issue 16's "must show"): 200 creates split across
both systems at once, System B restored from a dump taken halfway, more creates on the
restored B — no id is ever issued twice, and after a reconciliation pass both sides hold
the same rows."""

from __future__ import annotations

import asyncio
import subprocess
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from e2e_support import Side, eventually, new_database, start_side

from bridge.ids import decode
from bridge.testing import NatsServer, PostgresServer
from bridge.testing.servers import to_plain_url


async def create_many(side: Side, tag: str, count: int) -> list[int]:
    """``count`` organizations created on ``side`` at once; their ids."""

    async def one(i: int) -> int:
        body = {"name": f"{tag} {i}", "domain": f"{tag}-{i}.restore.test"}
        response = await side.client.post("/organizations", json=body)
        assert response.status_code == 201, response.text
        created: int = response.json()["id"]
        return created

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def ids_of(side: Side) -> list[int]:
    return [row["id"] for row in await side.rows("organizations")]


async def test_concurrent_creates_and_a_restore_never_collide_and_converge(
    nats_server: NatsServer, postgres: PostgresServer, unique: str, tmp_path: Path
) -> None:
    names = {"name": f"a{unique}", "peer": f"b{unique}"}
    b_names = {"name": names["peer"], "peer": names["name"]}
    sides: dict[str, Any] = {"stream": f"restore-{unique}", "nats_url": nats_server.url}
    dump = tmp_path / "b.dump"
    async with AsyncExitStack() as stack:
        a = await start_side(stack, postgres, **names, **sides)
        b_url = await new_database(stack, postgres)
        async with AsyncExitStack() as b_stack:
            b = await start_side(b_stack, postgres, **b_names, **sides, database_url=b_url)
            first = await asyncio.gather(create_many(a, "a1", 50), create_many(b, "b1", 50))

            async def both_have(count: int) -> bool:
                return len(await ids_of(a)) == len(await ids_of(b)) == count

            await eventually(lambda: both_have(100), what="the first 100 on both sides")
            # The backup, taken halfway.
            subprocess.run(
                ["pg_dump", "--format=custom", f"--file={dump}", to_plain_url(b_url)],
                check=True, capture_output=True, timeout=120,
            )  # fmt: skip
            second = await asyncio.gather(create_many(a, "a2", 50), create_many(b, "b2", 50))
            await eventually(lambda: both_have(200), what="all 200 on both sides")
        issued = [*first[0], *first[1], *second[0], *second[1]]
        assert len(set(issued)) == 200  # concurrent creates on both systems: no collision
        assert {decode(i).system for i in first[0] + second[0]} == {1}
        assert {decode(i).system for i in first[1] + second[1]} == {2}

        # B is lost and restored from the backup: it lacks its own last 50 and A's last 50.
        restored_url = await postgres.create_database()
        stack.push_async_callback(postgres.drop_database, restored_url)
        subprocess.run(
            ["pg_restore", "--no-owner", f"--dbname={to_plain_url(restored_url)}", str(dump)],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        b = await start_side(stack, postgres, **b_names, **sides, database_url=restored_url)
        assert len(await ids_of(b)) == 100
        # The restored generator goes on after every id B gave out since the backup.
        after = await create_many(b, "b3", 50)
        assert not set(after) & set(issued)
        assert min(after) > max(second[1])

        # One reconciliation pass from A: what the backup lacked comes back to B.
        assert a.state.bridge is not None
        report = await a.state.bridge.reconciler().run()
        assert report.error is None

        async def converged() -> bool:
            rows_a, rows_b = await a.rows("organizations"), await b.rows("organizations")
            return len(rows_a) == 250 and rows_a == rows_b

        await eventually(converged, what="A and the restored B identical")
        assert sorted(await ids_of(a)) == sorted([*issued, *after])
