"""Backfill against a real PostgreSQL (no NATS: the backfill only writes outbox rows).

Proves the batch contract: a stopped or cancelled run resumes without emitting a
batch twice (outbox rows == checkpoint count, one per row), a finished run is not
repeated unless restarted, backpressure holds the backfill while the outbox is
full, and two processes on one run share the work without duplicates.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from bridge.env import configure_bidirectional
from bridge.envelope import format_timestamp
from bridge.outbox.body import envelope_sql
from bridge.outbox.capture import Outbox
from bridge.reconcile import backfill as backfill_module
from bridge.reconcile.backfill import (
    STATUS_ALREADY_COMPLETED,
    STATUS_COMPLETED,
    STATUS_STOPPED,
    Backfill,
    BackfillOptions,
    BackfillProgress,
)
from bridge.reconcile.restate import write_snapshots
from bridge.reconcile.synced_models import load_synced_models
from services.shared.db import migrate

ORGS, USERS = 25, 10
ROWS = ORGS + USERS

# Rows written straight into the tables (no outbox): data from before sync was on.
# Every fifth user is a tombstone.
SEED = (
    """
    INSERT INTO organizations (id, name, domain, active, created_at, updated_at, origin)
    SELECT 1000000 + n, 'Org ' || n, 'org' || n || '.test', true,
           now() - interval '1 day', now() - n * interval '1 second', 'system_a'
      FROM generate_series(1, :orgs) AS n
    """,
    """
    INSERT INTO users (id, organization_id, name, email, role, active, created_at, updated_at,
                       origin, deleted_at)
    SELECT 2000000 + o.rn, o.id, 'User ' || o.rn, 'user' || o.rn || '@x.test', 'member', true,
           now() - interval '1 day', now() - o.rn * interval '1 second', 'system_a',
           CASE WHEN o.rn % 5 = 0 THEN now() - o.rn * interval '1 second' END
      FROM (SELECT id, row_number() OVER (ORDER BY id) AS rn FROM organizations) AS o
     WHERE o.rn <= :users
    """,
)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    await migrate(database_url)
    engine = create_async_engine(database_url, pool_size=4)
    async with engine.begin() as conn:
        await conn.execute(text("SET LOCAL bridge.capture = 'off'"))  # not captured
        for statement in SEED:
            await conn.execute(text(statement), {"orgs": ORGS, "users": USERS})
    yield engine
    await engine.dispose()


CONFIG = configure_bidirectional("system_a", "system_b", env={})


@pytest.fixture
def outbox() -> Outbox:
    return Outbox(CONFIG)


MODELS = load_synced_models("services.shared.models")


async def scalar(engine: AsyncEngine, sql: str) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql))).scalar()


async def emitted_per_row(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT resource_id, count(*) FROM bridge_outbox GROUP BY resource_id")
        )
        return {str(r[0]): int(r[1]) for r in rows}


async def checkpoint_total(engine: AsyncEngine, run: str = "default") -> int:
    total = await scalar(
        engine,
        f"SELECT coalesce(sum(rows_emitted), 0) FROM bridge_backfill_runs WHERE run_name = '{run}'",
    )
    return int(total)


async def test_stopped_run_resumes_then_is_complete_until_restarted(
    engine: AsyncEngine, outbox: Outbox
) -> None:
    options = BackfillOptions(batch_size=10)
    seen: list[BackfillProgress] = []
    first = Backfill(engine, outbox, MODELS, options)

    def stop_after_two_batches(p: BackfillProgress) -> None:
        seen.append(p)
        if len(seen) == 2:
            first.request_stop()

    report = await first.run(stop_after_two_batches)
    assert report.status == STATUS_STOPPED and report.emitted == 20
    assert [(p.resource_type, p.done, p.total) for p in seen] == [
        ("organization", 10, ORGS),
        ("organization", 20, ORGS),
    ]
    assert await scalar(engine, "SELECT count(*) FROM bridge_outbox") == 20
    assert await checkpoint_total(engine) == 20

    progress: list[BackfillProgress] = []
    resumed = await Backfill(engine, outbox, MODELS, options).run(progress.append)
    assert resumed.status == STATUS_COMPLETED and resumed.emitted == ROWS - 20
    assert [(m.resource_type, m.emitted, m.rows_emitted, m.total) for m in resumed.models] == [
        ("organization", ORGS - 20, ORGS, ORGS),
        ("user", USERS, USERS, USERS),
    ]
    assert progress[-1].done == progress[-1].total == USERS
    counts = await emitted_per_row(engine)
    assert len(counts) == ROWS and set(counts.values()) == {1}  # every row once, none twice
    assert await checkpoint_total(engine) == ROWS

    # The events re-state each row as it is: full snapshot, tombstones as deleted.
    async with engine.connect() as conn:
        events = {
            r.resource_id: r
            for r in await conn.execute(
                text(
                    f"SELECT resource_id, event_type, {envelope_sql()} AS payload "
                    "FROM bridge_outbox"
                )
            )
        }
        users = (await conn.execute(text("SELECT * FROM users"))).mappings().all()
    for user in users:
        event = events[str(user["id"])]
        assert event.event_type == ("user.deleted" if user["deleted_at"] else "user.updated")
        payload = event.payload["payload"]
        assert payload["email"] == user["email"] and payload["origin"] == "system_a"
        assert payload["updated_at"] == format_timestamp(user["updated_at"])
    assert sum(1 for u in users if u["deleted_at"]) == USERS // 5

    again = await Backfill(engine, outbox, MODELS, options).run()
    assert again.status == STATUS_ALREADY_COMPLETED and again.emitted == 0
    assert await scalar(engine, "SELECT count(*) FROM bridge_outbox") == ROWS

    restarted = await Backfill(engine, outbox, MODELS, BackfillOptions(restart=True)).run()
    assert restarted.status == STATUS_COMPLETED and restarted.emitted == ROWS
    other_run = await Backfill(engine, outbox, MODELS, BackfillOptions(run_name="second")).run()
    assert other_run.status == STATUS_COMPLETED and other_run.emitted == ROWS
    assert await scalar(engine, "SELECT count(*) FROM bridge_outbox") == 3 * ROWS


class _HangingWriter:
    """Writes the outbox rows of the second batch, then hangs inside its transaction
    (in place of :func:`bridge.reconcile.restate.write_snapshots` in the backfill)."""

    def __init__(self) -> None:
        self.calls = 0
        self.hanging = asyncio.Event()

    async def __call__(self, session: AsyncSession, outbox: Outbox, rows: Sequence[Any]) -> int:
        self.calls += 1
        count = await write_snapshots(session, outbox, rows)
        if self.calls == 2:
            self.hanging.set()
            await asyncio.Event().wait()
        return count


async def test_cancel_mid_batch_rolls_the_batch_back(
    engine: AsyncEngine, outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    hanging = _HangingWriter()
    monkeypatch.setattr(backfill_module, "write_snapshots", hanging)
    options = BackfillOptions(batch_size=10)
    task = asyncio.create_task(Backfill(engine, outbox, MODELS, options).run())
    await asyncio.wait_for(hanging.hanging.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Only the first batch committed: its rows and its checkpoint, nothing of the second.
    assert await scalar(engine, "SELECT count(*) FROM bridge_outbox") == 10
    assert await checkpoint_total(engine) == 10

    monkeypatch.undo()
    report = await Backfill(engine, outbox, MODELS, options).run()
    assert report.status == STATUS_COMPLETED and report.emitted == ROWS - 10
    counts = await emitted_per_row(engine)
    assert len(counts) == ROWS and set(counts.values()) == {1}


async def test_backpressure_waits_while_the_outbox_is_full(
    engine: AsyncEngine, outbox: Outbox
) -> None:
    options = BackfillOptions(batch_size=10, max_pending=15, pending_poll_interval=0.05)
    waits: list[int] = []

    def record(p: BackfillProgress) -> None:
        if p.waiting_for_relay is not None:
            waits.append(p.waiting_for_relay)

    task = asyncio.create_task(Backfill(engine, outbox, MODELS, options).run(record))
    deadline = asyncio.get_running_loop().time() + 10
    while len(waits) < 3:  # no relay: it stays paused
        assert asyncio.get_running_loop().time() < deadline and not task.done()
        await asyncio.sleep(0.02)
    assert waits[0] == 16  # counted up to max_pending + 1 only
    assert await scalar(engine, "SELECT count(*) FROM bridge_outbox") == 20  # 2 batches, then held

    async with engine.begin() as conn:  # the "relay" catches up
        await conn.execute(text("UPDATE bridge_outbox SET status = 'sent', sent_at = now()"))
    report = await asyncio.wait_for(task, 20)
    assert report.status == STATUS_COMPLETED and report.paused_seconds > 0
    counts = await emitted_per_row(engine)
    assert len(counts) == ROWS and set(counts.values()) == {1}


async def test_two_processes_on_one_run_share_the_work(engine: AsyncEngine, outbox: Outbox) -> None:
    options = BackfillOptions(batch_size=3)
    reports = await asyncio.gather(
        Backfill(engine, outbox, MODELS, options).run(),
        Backfill(engine, outbox, MODELS, options).run(),
    )
    assert sum(r.emitted for r in reports) == ROWS
    assert {r.status for r in reports} <= {STATUS_COMPLETED, STATUS_ALREADY_COMPLETED}
    counts = await emitted_per_row(engine)
    assert len(counts) == ROWS and set(counts.values()) == {1}


async def test_stop_ends_a_rate_limit_wait_at_once(engine: AsyncEngine, outbox: Outbox) -> None:
    async def never(_seconds: float) -> None:  # a wait far longer than the test
        await asyncio.Event().wait()

    options = BackfillOptions(batch_size=10, rate=1.0)
    backfill = Backfill(engine, outbox, MODELS, options, sleep=never)
    first_batch = asyncio.Event()
    task = asyncio.create_task(backfill.run(lambda _p: first_batch.set()))
    await asyncio.wait_for(first_batch.wait(), 10)
    backfill.request_stop()
    report = await asyncio.wait_for(task, 10)
    assert report.status == STATUS_STOPPED and report.emitted == 10


async def test_cli_sigterm_finishes_the_batch_and_exits_1(
    engine: AsyncEngine, database_url: str
) -> None:
    root = Path(__file__).resolve().parents[2]
    path = os.pathsep.join([str(root / "src"), str(root), os.environ.get("PYTHONPATH", "")])
    env = {
        **os.environ,
        "PYTHONPATH": path,
        "APP_NAME": "system_a",
        "DESTINATION_APP": "system_b",
        "DATABASE_URL": database_url,
        "BRIDGE_MODELS": "services.shared.models",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge.cli", "backfill", "--batch-size", "5", "--rate", "2",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    deadline = asyncio.get_running_loop().time() + 30
    while await checkpoint_total(engine) == 0:
        assert asyncio.get_running_loop().time() < deadline, "no batch committed"
        await asyncio.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1, err.decode()
    assert "stopped: run the same command again to resume" in out.decode()
    done = await checkpoint_total(engine)
    assert 0 < done < ROWS
    assert await scalar(engine, "SELECT count(*) FROM bridge_outbox") == done
