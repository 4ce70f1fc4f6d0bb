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
from fault_stack import FAST, Deployment, in_process_side, new_database

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
        db_a, db_b = await new_database(postgres, stack), await new_database(postgres, stack)
        a = await in_process_side(f"a{unique}", f"b{unique}", db_a, stream=stream, nats_urls=urls)
        deployment = Deployment(a, a, stream, urls)  # b filled in below; stop() owns both
        stack.push_async_callback(deployment.stop)
        deployment.b = await in_process_side(
            f"b{unique}", f"a{unique}", db_b, stream=stream, nats_urls=urls
        )

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
            config=_config(),
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


def _config() -> dict[str, object]:
    return {
        "consumer_mode": "pull",
        "ack_wait": FAST["ack_wait"],
        "backoff": list(FAST["backoff"]),
        "max_deliver": FAST["max_deliver"],
    }
