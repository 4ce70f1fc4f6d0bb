"""Scenario 3: the nats-server is frozen (SIGSTOP) for longer than ``ack_wait``, then resumed.

Both services run as uvicorn processes with ``ACK_WAIT=2s``.  While frozen the server
keeps its sockets open but answers nothing: publishes and acks sit in TCP buffers and
client timeouts fire (the relay counts failed attempts, the consumer's fetches time
out).  After SIGCONT the server finds deliveries older than ``ack_wait`` and redelivers
them while the late acks arrive — exactly the race that makes a delivery run twice if
the inbox is not idempotent.  Everything acknowledged must be applied once.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from fault_scenario import FaultLog, run_scenario
from fault_stack import new_database, process_pair, start_all

from bridge.testing import NatsServer, PostgresServer

pytestmark = pytest.mark.faults

ENV = {"ACK_WAIT": "2s", "BACKOFF": "0.5s 1s 2s", "MAX_DELIVER": "6"}
FROZEN = 3.0  # > ACK_WAIT
FREEZES = 3


async def test_nats_sigstop_longer_than_ack_wait(
    own_nats: NatsServer,
    postgres: PostgresServer,
    unique: str,
    results_dir: Path,
    seed: int,
    tmp_path: Path,
) -> None:
    stream = f"faults-{unique}"
    urls = (own_nats.url,)
    async with AsyncExitStack() as stack:
        db_a, db_b = await new_database(postgres, stack), await new_database(postgres, stack)
        deployment = process_pair(
            f"a{unique}", f"b{unique}", db_a, db_b,
            stream=stream, nats_urls=urls, log_dir=tmp_path, env=ENV,
        )  # fmt: skip
        stack.push_async_callback(deployment.stop)
        stack.callback(own_nats.resume)  # never leave a stopped server behind
        await start_all(deployment)

        async def inject(faults: FaultLog) -> None:
            # Several freezes: each one catches whatever deliveries are in flight then.
            for _ in range(FREEZES):
                own_nats.pause()
                faults.note("SIGSTOP", "nats-server")
                await asyncio.sleep(FROZEN)  # the freeze itself, while writes go on
                own_nats.resume()
                faults.note("SIGCONT", "nats-server", frozen_seconds=FROZEN)
                await asyncio.sleep(1.0)  # deliveries flow again before the next freeze

        result = await run_scenario(
            scenario="nats_sigstop_over_ack_wait",
            title=f"NATS frozen (SIGSTOP) {FREEZES}x {FROZEN:.0f} s > ack_wait 2 s, SIGCONT each",
            topology="2 uvicorn processes, 1 nats-server (stopped), local PostgreSQL",
            config={"consumer_mode": "pull", **ENV},
            deployment=deployment,
            inject=inject,
            results_dir=results_dir,
            seed=seed,
            after=3.0,
            converge_timeout=90.0,
        )
    assert result.passed, result.failure_message()
    assert result.load["acked"] >= 100
