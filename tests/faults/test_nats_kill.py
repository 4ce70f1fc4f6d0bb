"""Scenario 1: the nats-server is killed with SIGKILL mid-load and restarted on the same store.

Both services run in this process (real lifespans: relay + pull consumer) against a
nats-server of the test's own.  While API writes go on on both sides, the server dies
without warning; the APIs keep acknowledging writes (they only touch PostgreSQL), the
relays keep them pending, and after the restart (same port, same JetStream store)
everything must arrive once.  The short scenario ``make test`` runs (``smoke``).
"""

from __future__ import annotations

import asyncio
import signal
from contextlib import AsyncExitStack

import pytest
from fault_scenario import FaultLog, run_scenario
from fault_stack import fast_config, in_process_pair

from bridge.testing import NatsServer, PostgresServer

pytestmark = pytest.mark.faults

OUTAGE = 3.0


@pytest.mark.smoke
async def test_nats_kill9_and_restart_mid_load(
    own_nats: NatsServer, postgres: PostgresServer, unique: str, results_dir, seed: int
) -> None:
    stream = f"faults-{unique}"
    urls = (own_nats.url,)
    async with AsyncExitStack() as stack:
        deployment = await in_process_pair(stack, postgres, unique, stream=stream, nats_urls=urls)

        async def inject(faults: FaultLog) -> None:
            await asyncio.to_thread(own_nats.stop, signal.SIGKILL)
            faults.note("kill -9", "nats-server")
            await asyncio.sleep(OUTAGE)  # the outage itself, while writes go on
            await asyncio.to_thread(own_nats.start)
            faults.note("restart", "nats-server", outage_seconds=OUTAGE)

        result = await run_scenario(
            scenario="nats_kill9_restart",
            title="NATS kill -9 and restart mid-load",
            topology="2 in-process services, 1 nats-server (killed), local PostgreSQL",
            config=fast_config(),
            deployment=deployment,
            inject=inject,
            results_dir=results_dir,
            seed=seed,
            after=2.0,
            converge_timeout=60.0,
        )
    assert result.passed, result.failure_message()
    assert result.load["acked"] >= 100 and result.events_written >= result.load["acked"]
    assert any(f["kind"] == "kill -9" for f in result.faults)
