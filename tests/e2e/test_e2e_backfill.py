"""Backfill with both services running for real.

Must show (issue #8): A holds 10,000 organizations and users written before sync was
on (bulk SQL, no outbox rows), B is empty; ``bridge backfill`` is killed halfway and
run again → B is identical to A (every column, tombstones included), every row was
emitted once (outbox rows == rows, stream messages == rows) and B's inbox processed
each event once.  Then: a second backfill after convergence changes nothing on B, and
a row changed on B after A's snapshot was taken is not overwritten (last writer wins).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from contextlib import AsyncExitStack
from pathlib import Path

from e2e_support import Pair, Side, eventually, start_side
from sqlalchemy import text

from bridge.reconcile.backfill import STATUS_COMPLETED, Backfill, BackfillOptions
from bridge.reconcile.synced_models import load_synced_models
from bridge.testing import NatsServer, PostgresServer
from services.shared.settings import ServiceSettings
from services.shared.worker import run_worker

ROOT = Path(__file__).resolve().parents[2]
MODELS = "services.shared.models"


async def seed(side: Side, organizations: int, users: int) -> None:
    """Rows written straight into A's tables — no outbox rows, as before sync was switched on.
    Every 25th organization and user is a tombstone; every user belongs to an organization."""
    statements = (
        f"""
        INSERT INTO organizations (name, domain, active, created_at, updated_at, origin,
                                   deleted_at)
        SELECT 'Org ' || n, 'org' || n || '.test', n % 7 <> 0,
               now() - interval '30 days' - n * interval '1013 microseconds',
               now() - interval '1 hour' - n * interval '1013 microseconds', '{side.name}',
               CASE WHEN n % 25 = 0 THEN now() - n * interval '1013 microseconds' END
          FROM generate_series(1, {organizations}) AS n
        """,
        f"""
        INSERT INTO users (organization_id, name, email, role, active, created_at,
                           updated_at, origin, deleted_at)
        SELECT o.id, 'User ' || n, 'user' || n || '@example.test',
               CASE WHEN n % 3 = 0 THEN 'admin' ELSE 'member' END, true,
               now() - interval '20 days' - n * interval '977 microseconds',
               now() - interval '1 hour' - n * interval '977 microseconds', '{side.name}',
               CASE WHEN n % 25 = 0 THEN now() - n * interval '977 microseconds' END
          FROM generate_series(1, {users}) AS n
          JOIN (SELECT id, row_number() OVER (ORDER BY id) AS rn FROM organizations) AS o
            ON o.rn = (n - 1) % {organizations} + 1
        """,
    )
    async with side.state.engine.begin() as conn:
        await conn.execute(text("SET LOCAL bridge.capture = 'off'"))  # before sync was on
        for statement in statements:
            await conn.execute(text(statement))


async def column(side: Side, sql: str) -> list[object]:
    async with side.state.engine.connect() as conn:
        return list((await conn.execute(text(sql))).scalars())


def cli_env(side: Side, peer: str, nats_url: str) -> dict[str, str]:
    """The service's environment, as an operator runs ``bridge`` beside it."""
    path = os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {
        **os.environ,
        "PYTHONPATH": path,
        "APP_NAME": side.name,
        "DESTINATION_APP": peer,
        "DATABASE_URL": side.database_url,
        "NATS_URL": nats_url,
        "STREAM_NAME": side.config.stream_name,
        "BRIDGE_MODELS": MODELS,
    }


async def start_backfill(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge.cli", "backfill", "--batch-size", "500", *args,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def test_backfill_fills_an_empty_system_b_after_being_killed_halfway(
    pair: Pair, nats_server: NatsServer
) -> None:
    a, b = pair.a, pair.b
    await seed(a, 5_000, 5_000)
    total = 10_000
    assert await b.scalar("SELECT count(*) FROM organizations") == 0
    env = cli_env(a, b.name, nats_server.url)

    # Paced at 1,500 rows/s so there is a "halfway" to kill it at.
    first = await start_backfill(env, "--rate", "1500")

    async def progressed() -> int | None:
        done = int(
            await a.scalar("SELECT coalesce(sum(rows_emitted), 0) FROM bridge_backfill_runs")
        )
        return done if done >= 4_000 else None

    await eventually(progressed, timeout=60.0, interval=0.02, what="backfill halfway")
    first.send_signal(signal.SIGKILL)
    await first.wait()
    checkpoint = int(await a.scalar("SELECT sum(rows_emitted) FROM bridge_backfill_runs"))
    assert 4_000 <= checkpoint < total, checkpoint
    # The batch in flight died with its transaction: outbox rows == checkpoint, none lost.
    assert await a.scalar("SELECT count(*) FROM bridge_outbox") == checkpoint

    second = await start_backfill(env)
    out, err = await asyncio.wait_for(second.communicate(), 120.0)
    assert second.returncode == 0, err.decode()
    assert "completed" in out.decode() and f"{total - checkpoint} rows" in out.decode()
    assert "user [####################] 5000/5000" in err.decode()  # the progress bar

    async def identical() -> bool:
        return (
            await b.scalar("SELECT count(*) FROM users") == 5_000
            and await a.rows("organizations") == await b.rows("organizations")
            and await a.rows("users") == await b.rows("users")
        )

    await eventually(identical, timeout=180.0, interval=1.0, what="B identical to A")
    assert await b.scalar("SELECT count(*) FROM users WHERE deleted_at IS NOT NULL") == 200

    # No duplicates: one outbox row and one stream message per row; B processed each once.
    assert await a.scalar("SELECT count(DISTINCT resource_id) FROM bridge_outbox") == total
    assert await a.scalar("SELECT count(*) FROM bridge_outbox") == total
    assert (await pair.subject_counts())[a.config.subjects.publish] == total
    emitted = {str(e) for e in await column(a, "SELECT event_id FROM bridge_outbox")}

    async def inbox_done() -> bool:
        return (
            await b.scalar("SELECT count(*) FROM bridge_inbox WHERE status = 'processed'") == total
        )

    await eventually(inbox_done, timeout=30.0, what="B's inbox records")
    inbox = [str(e) for e in await column(b, "SELECT event_id FROM bridge_inbox")]
    assert set(inbox) == emitted and len(inbox) == total
    assert await b.scalar("SELECT count(*) FROM sync_stale_events") == 0
    assert await b.scalar("SELECT count(*) FROM sync_conflicts") == 0

    # The run is complete: running it again says so and emits nothing.
    third = await start_backfill(env, "--json")
    out, _ = await asyncio.wait_for(third.communicate(), 60.0)
    assert third.returncode == 0 and '"status": "already_completed"' in out.decode()
    assert await a.scalar("SELECT count(*) FROM bridge_outbox") == total


async def test_backfill_again_changes_nothing_and_never_overwrites_newer_data(
    nats_server: NatsServer, postgres: PostgresServer, unique: str
) -> None:
    stream = f"bf-{unique}"
    async with AsyncExitStack() as stack:
        a = await start_side(
            stack, postgres, name=f"a{unique}", peer=f"b{unique}", stream=stream,
            nats_url=nats_server.url,
        )  # fmt: skip
        # B's API runs without a consumer; its worker (started and stopped below) applies
        # A's events, so A's snapshots can be held back while B changes a row.
        b = await start_side(
            stack, postgres, name=f"b{unique}", peer=f"a{unique}", stream=stream,
            nats_url=nats_server.url, enable_consumer=False,
        )  # fmt: skip
        await seed(a, 20, 10)
        rows = 30
        settings = ServiceSettings(
            app_name=b.name, destination_app=a.name, database_url=b.database_url, db_pool_size=3
        )
        env = {"NATS_URL": nats_server.url, "STREAM_NAME": stream}
        assert a.state.bridge is not None
        models = load_synced_models(MODELS)

        async def backfill(run: str) -> None:
            assert a.state.bridge is not None
            options = BackfillOptions(run_name=run, batch_size=7)
            report = await Backfill(a.state.engine, a.state.bridge.outbox, models, options).run()
            assert report.status == STATUS_COMPLETED and report.emitted == rows

        async def processed(count: int) -> bool:
            done = await b.scalar("SELECT count(*) FROM bridge_inbox WHERE status = 'processed'")
            return bool(done == count)

        async def run_b_worker(until_processed: int) -> None:
            stop = asyncio.Event()
            worker = asyncio.create_task(run_worker(settings, stop, env=env))
            try:
                await eventually(
                    lambda: processed(until_processed), timeout=60.0, what="B's worker applied"
                )
            finally:
                stop.set()
                await asyncio.wait_for(worker, 15.0)

        await backfill("first")
        await run_b_worker(rows)
        converged = await b.rows("organizations"), await b.rows("users")
        assert converged == (await a.rows("organizations"), await a.rows("users"))

        # A's snapshots are taken (outbox rows written) while B's worker is down ...
        await backfill("second")
        target = next(o for o in converged[0] if o["deleted_at"] is None)
        # ... then B changes a row: a newer version than A's snapshot of it.
        changed = await b.client.patch(
            f"/organizations/{target['id']}", json={"name": "Newer on B"}
        )
        assert changed.status_code == 200

        async def a_has_it() -> bool:
            row = await a.get(f"/organizations/{target['id']}")
            return bool(row.json()["name"] == "Newer on B")

        await eventually(a_has_it, what="B's change applied on A")
        await run_b_worker(2 * rows)  # every snapshot processed (once) on B

        orgs_b, users_b = await b.rows("organizations"), await b.rows("users")
        assert users_b == converged[1]  # same versions: nothing changed
        assert [o for o in orgs_b if o["id"] != target["id"]] == [
            o for o in converged[0] if o["id"] != target["id"]
        ]
        kept = next(o for o in orgs_b if o["id"] == target["id"])
        assert kept["name"] == "Newer on B" and kept["origin"] == b.name  # not overwritten
        assert kept["updated_at"] > target["updated_at"]
        stale = await column(b, "SELECT resource_id FROM sync_stale_events")
        assert stale == [target["id"]]
        assert (orgs_b, users_b) == (await a.rows("organizations"), await a.rows("users"))
