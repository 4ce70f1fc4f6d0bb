"""Scenario 2: a service process is killed with SIGKILL mid-batch, then started again.

System A and System B run as ``python -m uvicorn services.system_x.main:app`` with the
environment devstack gives them (plus ``ACK_WAIT``/``BACKOFF``/``MAX_DELIVER``), with
pull and with push consumers.  Under load, System B is killed — its relay may hold
leased outbox rows, its consumer a batch in an open inbox transaction, its API requests
in flight — and restarted; then the same happens to System A.  In-flight requests to
the dead process are ``indeterminate`` in the history; whatever committed must arrive
on the other side exactly once.  A killed relay's leased rows are published by the
restarted one once their lease (30 s by default; not settable through the services'
environment) expires: that bounds the time to converge, and the consumer's retry
budget must outlast it (see ``ENV`` and test_dead_relay_lease.py).
"""

from __future__ import annotations

import asyncio
import signal
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from fault_scenario import FaultLog, run_scenario
from fault_stack import ProcessInstance, new_database, process_pair, start_all

from bridge.testing import NatsServer, PostgresServer

pytestmark = pytest.mark.faults

# The consumer's retry budget (1+2+4+8+16+16 = 47 s) outlasts a dead relay's lease
# (30 s): with a shorter budget a user whose organization is stuck in that lease is
# dead-lettered — the defect test_dead_relay_lease.py pins down.
ENV = {"ACK_WAIT": "3s", "BACKOFF": "1s 2s 4s 8s 16s 16s", "MAX_DELIVER": "7"}
DOWN = 1.5


@pytest.mark.parametrize("consumer_mode", ["pull", "push"])
async def test_service_kill9_mid_batch_and_restart(
    own_nats: NatsServer,
    postgres: PostgresServer,
    unique: str,
    results_dir: Path,
    seed: int,
    tmp_path: Path,
    consumer_mode: str,
) -> None:
    stream = f"faults-{unique}"
    urls = (own_nats.url,)
    app_a, app_b = f"a{unique}", f"b{unique}"
    async with AsyncExitStack() as stack:
        db_a, db_b = await new_database(postgres, stack), await new_database(postgres, stack)
        env = {**ENV, "CONSUMER_MODE": consumer_mode}
        deployment = process_pair(
            app_a, app_b, db_a, db_b, stream=stream, nats_urls=urls, log_dir=tmp_path, env=env
        )
        stack.push_async_callback(deployment.stop)
        await start_all(deployment)

        async def kill_and_restart(instance: ProcessInstance, faults: FaultLog) -> None:
            await asyncio.to_thread(instance.kill, signal.SIGKILL)
            faults.note("kill -9", instance.label)
            await asyncio.sleep(DOWN)  # the other side keeps writing meanwhile
            await instance.restart()
            faults.note("restart", instance.label, healthy=True)

        async def inject(faults: FaultLog) -> None:
            for side in (deployment.b, deployment.a):
                instance = side.instances[0]
                assert isinstance(instance, ProcessInstance)
                await kill_and_restart(instance, faults)
                await asyncio.sleep(1.5)  # load on both sides again before the next kill

        result = await run_scenario(
            scenario=f"service_kill9_restart_{consumer_mode}",
            title=f"kill -9 of a service process mid-batch, restart (B, then A; {consumer_mode})",
            topology="2 uvicorn processes, 1 nats-server, local PostgreSQL",
            config={"consumer_mode": consumer_mode, **ENV, "relay_lease": "30s (default)"},
            deployment=deployment,
            inject=inject,
            results_dir=results_dir,
            seed=seed,
            after=2.0,
            converge_timeout=100.0,
        )
    assert result.passed, result.failure_message()
    assert sum(1 for f in result.faults if f["kind"] == "kill -9") == 2
    assert result.load["acked"] >= 100
