"""Anti-entropy reconciliation between the real System A and System B (must-show).

1. Two identical databases of 10,000 rows (5,000 organizations + 5,000 users):
   one pass compares, repairs nothing, and transfers only checksums.
2. Rows changed, hand-deleted, tombstoned and inserted directly in B's database
   (bypassing the API) are found by one ``bridge reconcile`` pass and repaired:
   afterwards A and B hold identical rows, every column.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from e2e_support import Pair, Side, eventually
from sqlalchemy import text

from bridge.cli import main_async
from bridge.errors import ReconcileBusyError
from bridge.reconcile.reconciler import LOCK_CLASS
from bridge.reconcile.schedule import PeriodicReconciler

SEED = (
    """
    INSERT INTO organizations (id, name, domain, active, created_at, updated_at, origin)
    SELECT 10000000 + i, 'Org ' || i, 'org' || i || '.example', true,
           timestamptz '2026-01-01 00:00:00+00' + i * interval '1.000001 second',
           timestamptz '2026-02-01 00:00:00+00' + i * interval '1.000001 second', :origin
      FROM generate_series(1, :n) AS i
    """,
    """
    INSERT INTO users (id, organization_id, name, email, role, active, created_at,
                       updated_at, origin)
    SELECT 20000000 + i, 10000000 + i, 'User ' || i,
           'user' || i || '@example.com', 'member', true,
           timestamptz '2026-01-01 00:00:00+00' + i * interval '1 second',
           timestamptz '2026-02-01 00:00:00+00' + i * interval '1 second', :origin
      FROM generate_series(1, :n) AS i
    """,
)


async def seed_both(pair: Pair, n: int) -> None:
    """The same ``n`` organizations and ``n`` users in both databases (bulk SQL, no events)."""
    for side in (pair.a, pair.b):
        async with side.state.engine.begin() as conn:
            await conn.execute(text("SET LOCAL bridge.capture = 'off'"))  # not events
            for statement in SEED:
                await conn.execute(text(statement), {"n": n, "origin": pair.a.name})


async def execute(side: Side, sql: str) -> int:
    """A hand edit that bypasses sync: the capture triggers would publish any other write,
    so drift needs capture turned off (a restore, a tool run with bridge.capture off)."""
    async with side.state.engine.begin() as conn:
        await conn.execute(text("SET LOCAL bridge.capture = 'off'"))
        return (await conn.execute(text(sql))).rowcount


async def identical(pair: Pair) -> bool:
    for table in ("organizations", "users"):
        if await pair.a.rows(table) != await pair.b.rows(table):
            return False
    return True


async def test_identical_databases_transfer_only_checksums(pair: Pair) -> None:
    await seed_both(pair, 5000)
    bridge = pair.a.state.bridge
    assert bridge is not None
    report = await bridge.reconciler().run()
    print(
        f"\nreconcile 10,000 identical rows: {report.duration_seconds:.3f}s, "
        f"{report.requests} requests, {report.bytes_sent} bytes sent, "
        f"{report.bytes_received} bytes received"
    )
    assert report.error is None
    assert report.rows_repaired == 0 and report.rows_compared == 0
    # One whole-table digest per model: a request and a reply of about a hundred bytes each.
    assert report.ranges_compared == 2 and report.requests == 2
    assert report.bytes_transferred < 600
    status = (await pair.a.get("/sync_status")).json()["reconciliation"]
    assert status["rows_repaired"] == 0 and status["ranges_compared"] == 2
    assert status["bytes_transferred"] == report.bytes_transferred
    assert await pair.a.scalar("SELECT count(*) FROM bridge_outbox") == 0
    assert await pair.b.scalar("SELECT count(*) FROM bridge_outbox") == 0
    # While another pass of A holds the lock, a pass refuses to run.
    async with pair.a.state.engine.connect() as holder:
        await holder.execute(
            text("SELECT pg_advisory_lock(:cls, hashtext(:app))"),
            {"cls": LOCK_CLASS, "app": pair.a.name},
        )
        with pytest.raises(ReconcileBusyError):
            await bridge.reconciler().run()
        await holder.execute(
            text("SELECT pg_advisory_unlock(:cls, hashtext(:app))"),
            {"cls": LOCK_CLASS, "app": pair.a.name},
        )
    # The periodic task runs passes on its own and stops cleanly.
    periodic = PeriodicReconciler(bridge.reconciler(), interval=0.05)
    await periodic.start()
    try:
        runs = "SELECT count(*) FROM bridge_reconcile_runs WHERE error IS NULL"
        await eventually(lambda: _at_least(pair.a, runs, 2), what="a periodic pass")
    finally:
        await periodic.stop(timeout=10)
    assert periodic.last_report is not None and periodic.last_report.rows_repaired == 0
    assert b'bridge_reconcile_runs_total{result="ok"}' in await bridge.metrics.render()


async def _at_least(side: Side, sql: str, count: int) -> bool:
    return int(await side.scalar(sql)) >= count


async def test_one_cli_pass_repairs_changes_made_directly_in_b(
    pair: Pair, nats_server: Any
) -> None:
    a, b = pair.a, pair.b
    await seed_both(pair, 300)  # > leaf size: the pass narrows before comparing rows
    assert await identical(pair)
    # Newer versions written by hand in B (bumped updated_at, B as origin): B re-emits.
    assert await execute(b, f"""
        UPDATE organizations SET name = name || ' (edited in B)', updated_at = now(),
               origin = '{b.name}' WHERE id IN (10000001, 10000002,
               10000003)""") == 3  # fmt: skip
    # Hand edits that did not bump the version (origin A): A's copy is restored in B.
    changed = await execute(b, """
        UPDATE users SET role = 'admin', active = false
         WHERE id IN (20000004, 20000005, 20000006)""")  # fmt: skip
    assert changed == 3
    # Hard deletes bypassing the API: A re-emits, B gets the rows back.
    deleted = await execute(b, """
        DELETE FROM users
         WHERE id IN (20000007, 20000008, 20000009)""")  # fmt: skip
    assert deleted == 3
    # A tombstone written by hand in B (a newer version): A gets the delete.
    assert await execute(b, f"""
        UPDATE organizations SET deleted_at = now(), updated_at = now(), origin = '{b.name}'
         WHERE id = 10000010""") == 1  # fmt: skip
    # A row only B has.
    assert await execute(b, f"""
        INSERT INTO organizations (id, name, domain, active, created_at, updated_at, origin)
        VALUES (30000001, 'Only in B', 'only-b.example', true, now(), now(),
                '{b.name}')""") == 1  # fmt: skip
    assert not await identical(pair)

    out, err = io.StringIO(), io.StringIO()
    env = {
        "APP_NAME": a.name,
        "DESTINATION_APP": b.name,
        "DATABASE_URL": a.database_url,
        "NATS_URL": nats_server.url,
        "STREAM_NAME": pair.stream,
        "BRIDGE_MODELS": "services.shared.models",
    }
    code = await main_async(["--json", "reconcile"], env=env, out=out, err=err)
    assert code == 0, err.getvalue()
    report = json.loads(out.getvalue())
    print(f"\nreconcile after hand edits in B: {json.dumps(report)}")
    assert report["repaired_to_peer"] == 3 + 3  # unbumped edits + hard deletes
    assert report["repaired_from_peer"] == 3 + 1 + 1  # bumped edits + tombstone + B-only row
    assert report["unresolved"] == 0 and report["error"] is None
    assert report["ranges_compared"] > 2  # it narrowed instead of comparing 600 rows

    await eventually(lambda: identical(pair), timeout=30, what="A and B identical")
    assert await b.scalar("SELECT count(*) FROM users WHERE role = 'admin'") == 0
    assert await a.scalar(
        "SELECT count(*) FROM organizations WHERE deleted_at IS NOT NULL"
    ) == 1  # fmt: skip
    assert await a.scalar("SELECT name FROM organizations WHERE domain = 'only-b.example'")
    status = (await a.get("/sync_status")).json()["reconciliation"]
    assert status["rows_repaired"] == 11
    # A second pass finds nothing left to repair.
    out = io.StringIO()
    assert await main_async(["--json", "reconcile"], env=env, out=out, err=err) == 0
    again = json.loads(out.getvalue())
    assert again["rows_repaired"] == 0 and again["ranges_compared"] == 2
