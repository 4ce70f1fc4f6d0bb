"""Scenario 4: System B's PostgreSQL crashes mid-load and comes back (crash recovery).

System B's database lives on an embedded PostgreSQL of this test's own (``pgserver``
in ``tmp_path``; the machine's server on :5432, which System A uses, is never
touched).  Under load it is stopped with ``pg_ctl -m immediate`` — every backend dies
at once, open transactions (API writes, inbox batches, relay claims and settles) are
cut mid-flight, the next start runs crash recovery — and started again after a few
seconds.  B's API answers 500 meanwhile (``indeterminate`` in the history), its
consumer cannot commit (deliveries are NAKed and come back), its relay cannot claim.
Nothing acknowledged may be lost, nothing applied twice, nothing dead-lettered: the
outage is shorter than the redelivery budget (``backoff`` x ``max_deliver``).
"""

from __future__ import annotations

import asyncio
import contextlib
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from fault_scenario import FaultLog, run_scenario
from fault_stack import FAST, Deployment, RestartablePostgres, in_process_side, new_database

from bridge.testing import NatsServer, PostgresServer

pytestmark = pytest.mark.faults

OUTAGE = 3.0


async def test_postgres_crash_and_restart_of_one_side(
    own_nats: NatsServer,
    postgres: PostgresServer,
    unique: str,
    results_dir: Path,
    seed: int,
    tmp_path: Path,
) -> None:
    stream = f"faults-{unique}"
    urls = (own_nats.url,)
    embedded = await asyncio.to_thread(RestartablePostgres, tmp_path / "pg-b")
    async with AsyncExitStack() as stack:
        stack.callback(embedded.cleanup)
        stack.callback(_start_quietly, embedded)  # never leave it down for the drop
        db_a = await new_database(postgres, stack)
        db_b = await new_database(embedded.server, stack)
        a = await in_process_side(f"a{unique}", f"b{unique}", db_a, stream=stream, nats_urls=urls)
        deployment = Deployment(a, a, stream, urls)
        stack.push_async_callback(deployment.stop)
        deployment.b = await in_process_side(
            f"b{unique}", f"a{unique}", db_b, stream=stream, nats_urls=urls
        )

        async def inject(faults: FaultLog) -> None:
            await asyncio.to_thread(embedded.crash)
            faults.note("pg_ctl stop -m immediate", f"PostgreSQL of {deployment.b.app}")
            await asyncio.sleep(OUTAGE)  # the outage itself, while writes go on
            await asyncio.to_thread(embedded.start)
            faults.note("start (crash recovery)", f"PostgreSQL of {deployment.b.app}")

        result = await run_scenario(
            scenario="postgres_crash_restart",
            title="PostgreSQL of System B crashes (immediate stop) and restarts mid-load",
            topology="2 in-process services, 1 nats-server, B on an embedded PostgreSQL",
            config={
                "consumer_mode": "pull",
                "ack_wait": FAST["ack_wait"],
                "backoff": list(FAST["backoff"]),
                "max_deliver": FAST["max_deliver"],
                "outage_seconds": OUTAGE,
            },
            deployment=deployment,
            inject=inject,
            results_dir=results_dir,
            seed=seed,
            after=3.0,
            converge_timeout=60.0,
        )
    assert result.passed, result.failure_message()
    assert result.load["acked"] >= 100
    # B's API really failed during the outage: the fault hit the write path.
    assert result.load["indeterminate"] + result.load["statuses"].get("500", 0) > 0


def _start_quietly(embedded: RestartablePostgres) -> None:
    with contextlib.suppress(Exception):
        embedded.start()
