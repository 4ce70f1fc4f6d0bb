"""Scenario 5: two instances of each service on one database pair (four processes) under load.

Each side runs two uvicorn processes on the same database: two relays claim the same
outbox (``SKIP LOCKED`` + lease), two consumers share one durable (pull: both fetch;
push: one deliver group; the server splits the deliveries), and API writes land on
either instance.  Midway, instance 0 of each side gets a rolling restart (SIGTERM: the
lifespan drains the consumer and finishes the relay batch; then it starts again) while
instance 1 carries on.  Nothing may be lost, nothing published or applied twice, and
per-record order must hold (the final state check fails if an older version of a
record overtook a newer one).  Run with pull and with push consumers.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from fault_scenario import FaultLog, run_scenario
from fault_stack import ProcessInstance, new_database, process_pair, start_all

from bridge.testing import NatsServer, PostgresServer

pytestmark = pytest.mark.faults

ENV = {"ACK_WAIT": "5s", "BACKOFF": "0.5s 1s 2s 4s", "MAX_DELIVER": "8"}


@pytest.mark.parametrize("consumer_mode", ["pull", "push"])
async def test_two_instances_per_side_under_load(
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
    async with AsyncExitStack() as stack:
        db_a, db_b = await new_database(postgres, stack), await new_database(postgres, stack)
        deployment = process_pair(
            f"a{unique}", f"b{unique}", db_a, db_b,
            stream=stream, nats_urls=urls, log_dir=tmp_path, replicas=2,
            env={**ENV, "CONSUMER_MODE": consumer_mode},
        )  # fmt: skip
        stack.push_async_callback(deployment.stop)
        await start_all(deployment)

        async def inject(faults: FaultLog) -> None:
            faults.note("4 processes under load", "all instances", seconds=3.0)
            await asyncio.sleep(3.0)  # four processes under load before the restarts
            for side in deployment.sides:
                instance = side.instances[0]
                assert isinstance(instance, ProcessInstance)
                await instance.terminate()  # SIGTERM, graceful
                faults.note("SIGTERM (rolling restart)", instance.label)
                await instance.restart()
                faults.note("restart", instance.label, healthy=True)

        result = await run_scenario(
            scenario=f"scale_out_2x2_{consumer_mode}",
            title=f"2 instances per side on one database pair, rolling restart ({consumer_mode})",
            topology="4 uvicorn processes (2 per side), 1 nats-server, local PostgreSQL",
            config={"consumer_mode": consumer_mode, "instances_per_side": 2, **ENV},
            deployment=deployment,
            inject=inject,
            results_dir=results_dir,
            seed=seed,
            workers=8,
            after=2.0,
            converge_timeout=90.0,
        )
    assert result.passed, result.failure_message()
    assert result.load["acked"] >= 200
    instances = {w["instance"] for w in _history(results_dir, consumer_mode)}
    assert len(instances) == 4  # the load really reached all four processes


def _history(results_dir: Path, consumer_mode: str) -> list[dict[str, object]]:
    import json

    path = results_dir / f"scale_out_2x2_{consumer_mode}.history.json"
    writes: list[dict[str, object]] = json.loads(path.read_text())
    return [w for w in writes if w["outcome"] == "acked"]
