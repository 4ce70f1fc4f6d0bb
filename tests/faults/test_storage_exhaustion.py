"""Scenario: JetStream runs out of storage mid-load, then space is freed.

Both services run in this process against a nats-server whose file storage is capped at
128 KB (:mod:`fault_storage`): by the account's limit (``max_file``, answered with a
400) or by the server's (``max_file_store``, a 503).  The load fills the stream within
seconds; from then on every publish is refused while the APIs go on
acknowledging writes (they only touch PostgreSQL).  The relays run with
``max_attempts=3`` and retries every 0.05 to 0.5 s, so while the store stays full each
row is attempted far more often than ``max_attempts``: it must stay ``pending`` —
never ``failed`` (that needs an operator), never ``sent`` without a PubAck.  Then the
operator raises the limit (config reload, no restart) and sync must resume by itself:
every event exactly once, 0 lost, converged.

The account variant is the ``smoke`` scenario of ``make test``: it found the defect
(an account's full store counted as a rejection and turned rows ``failed``).
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from fault_scenario import FaultLog, run_scenario
from fault_stack import Deployment, fast_config, in_process_pair
from fault_storage import Limit, cleanup, limited_nats, raise_limit

from bridge.config import RelayOptions
from bridge.testing import PostgresServer, to_plain_url

pytestmark = pytest.mark.faults

LIMIT = "128KB"
RAISED = "64MB"
HOLD = 3.0
MAX_ATTEMPTS = 3
RELAY = RelayOptions(
    poll_interval=0.2, lease=5.0, retry_base=0.05, retry_max=0.5, max_attempts=MAX_ATTEMPTS
)
#: In ``last_error`` when the store refused a row: "resource limits exceeded for account"
#: (account), "insufficient resources" (server).
FULL = "last_error LIKE '%resource%'"


async def outbox_now(deployment: Deployment) -> dict[str, Any]:
    """Both sides' outbox: rows by status, rows refused for lack of space (still pending,
    and ever), most attempts."""
    totals: dict[str, Any] = {
        "pending": 0, "failed": 0, "sent": 0, "refused": 0, "ever_refused": 0, "attempts": 0
    }  # fmt: skip
    for side in deployment.sides:
        conn = await asyncpg.connect(to_plain_url(side.database_url), timeout=5)
        try:
            row = await conn.fetchrow(
                "SELECT count(*) FILTER (WHERE status = 'pending') AS pending,"
                " count(*) FILTER (WHERE status = 'failed') AS failed,"
                " count(*) FILTER (WHERE status = 'sent') AS sent,"
                f" count(*) FILTER (WHERE status = 'pending' AND {FULL}) AS refused,"
                f" count(*) FILTER (WHERE {FULL}) AS ever_refused,"
                " coalesce(max(attempts), 0) AS attempts FROM bridge_outbox"
            )
        finally:
            await conn.close()
        assert row is not None
        for key in ("pending", "failed", "sent", "refused", "ever_refused"):
            totals[key] += int(row[key])
        totals["attempts"] = max(totals["attempts"], int(row["attempts"]))
    return totals


async def until_full(deployment: Deployment, timeout: float) -> float:
    """Wait until some relay recorded that the store refused a row; the seconds it took."""
    started = time.monotonic()
    while not (await outbox_now(deployment))["ever_refused"]:
        if time.monotonic() - started > timeout:
            raise AssertionError(f"the store did not fill up within {timeout}s")
        await asyncio.sleep(0.1)
    return time.monotonic() - started


@pytest.mark.parametrize("kind", [pytest.param("account", marks=pytest.mark.smoke), "server"])
async def test_jetstream_storage_full_then_freed(
    kind: Limit, postgres: PostgresServer, unique: str, results_dir: Path, seed: int
) -> None:
    stream = f"faults-{unique}"
    server = limited_nats(kind, LIMIT)
    target = f"nats-server ({kind} file storage {LIMIT})"
    held: dict[str, Any] = {}
    try:
        async with AsyncExitStack() as stack:
            deployment = await in_process_pair(
                stack, postgres, unique, stream=stream, nats_urls=(server.url,), relay=RELAY
            )

            async def inject(faults: FaultLog) -> None:
                took = await until_full(deployment, timeout=30.0)
                faults.note("storage full", target, filled_after_seconds=round(took, 2))
                await asyncio.sleep(HOLD)  # full, while writes go on
                held.update(await outbox_now(deployment))
                faults.note("still full", target, **held)
                await raise_limit(server, kind, RAISED)
                faults.heal(target, raised_to=RAISED, by="config reload")

            result = await run_scenario(
                scenario=f"storage_full_{kind}",
                title=f"JetStream {kind} file storage full ({LIMIT}) mid-load, "
                "then raised by a config reload",
                topology=f"2 in-process services, 1 nats-server ({kind} max file storage "
                f"{LIMIT}), local PostgreSQL",
                config=fast_config(
                    relay_max_attempts=MAX_ATTEMPTS,
                    relay_retry="0.05 s doubling to 0.5 s",
                    storage_limit=f"{kind} {LIMIT}",
                    full_for_seconds=HOLD,
                ),
                deployment=deployment,
                inject=inject,
                results_dir=results_dir,
                seed=seed,
                after=2.0,
                converge_timeout=60.0,
            )
    finally:
        cleanup(server)
    # While full: rows kept pending and retried past max_attempts, none failed.
    assert held["failed"] == 0, held
    assert held["refused"] > 0 and held["attempts"] > MAX_ATTEMPTS, held
    assert result.passed, result.failure_message()
    assert result.load["acked"] >= 100
