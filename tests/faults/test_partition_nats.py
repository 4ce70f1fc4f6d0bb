"""Scenario: a network partition between System B's bridge and NATS.

System A talks to the nats-server directly; System B's bridge (relay and pull
consumer) through a :class:`tcp_proxy.TcpProxy`.  Under load on both sides the link
goes through, in turn:

1. ``latency`` 100 ms each way: PubAcks, fetches and acks slow down;
2. ``blackhole`` 1.5 s, shorter than the dead-link bound (pings every 1 s, 3 may go
   unanswered: noticed after 2 to 4 s), healed: the connection survives, and everything
   held — PubAcks of publishes the relay already timed out and retries, acks of
   deliveries, fetch requests — arrives late;
3. ``reset`` 1 s: the connection is reset, reconnects are refused, then healed;
4. ``blackhole`` 6 s, longer than the bound, and the held connection is *stranded*
   (dead for good): B's client must notice by its PINGs alone, drop it and reconnect
   once healed; acks and publishes written into the dead connection are lost.

Meanwhile A keeps publishing towards B and B's API keeps committing outbox rows.
Verdict: 0 lost, 0 applied twice, converged, and how long after the last heal; the
fault log records when B's client noticed the dead link.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from fault_partition import nats_partition_pair, wait_for
from fault_scenario import FaultLog, run_scenario
from fault_stack import InProcessInstance, fast_config

from bridge.testing import NatsServer, PostgresServer
from bridge.transport.connection import ConnectionState

pytestmark = pytest.mark.faults

LATENCY = 0.1
PING = 1.0
OUTSTANDING = 3
BOUND = PING * (OUTSTANDING + 1)
SHORT = 1.5  # < PING * (OUTSTANDING - 1): never noticed
LONG = 6.0  # > BOUND: always noticed


async def test_partition_between_a_bridge_and_nats(
    own_nats: NatsServer, postgres: PostgresServer, unique: str, results_dir: Path, seed: int
) -> None:
    stream = f"faults-{unique}"
    async with AsyncExitStack() as stack:
        deployment, proxy = await nats_partition_pair(
            stack,
            postgres,
            unique,
            stream=stream,
            nats_url=own_nats.url,
            ping_interval=PING,
            max_outstanding_pings=OUTSTANDING,
        )
        b = deployment.b.instances[0]
        assert isinstance(b, InProcessInstance)
        connection = b.app.state.service.bridge.connection
        target = f"{deployment.b.app}'s bridge ↔ NATS"

        async def inject(faults: FaultLog) -> None:
            proxy.add_latency(LATENCY)
            faults.note("latency", target, seconds_each_way=LATENCY)
            await asyncio.sleep(2.0)

            before = connection.reconnects
            proxy.blackhole()
            faults.note("blackhole", target, seconds=SHORT)
            await asyncio.sleep(SHORT)
            proxy.pass_through()
            faults.note("heal (held bytes flow on)", target)
            await asyncio.sleep(1.0)
            assert connection.reconnects == before, "a short blackhole must not drop the link"

            proxy.reset()
            faults.note("reset", target)
            await asyncio.sleep(1.0)
            proxy.pass_through()
            faults.note("heal", target)
            await wait_for(lambda: connection.is_connected, 15, "reconnected after the reset")
            await asyncio.sleep(1.0)

            proxy.blackhole()
            started = time.monotonic()
            faults.note("blackhole", target, seconds=LONG)
            noticed = await wait_for(
                lambda: connection.state != ConnectionState.CONNECTED, LONG, "dead link noticed"
            )
            faults.note("dead link noticed by pings", target, after_seconds=round(noticed, 2))
            await asyncio.sleep(max(0.0, LONG - (time.monotonic() - started)))
            stranded = proxy.strand()
            proxy.pass_through()
            faults.heal(target, stranded=stranded, note="held connection dead for good")

        result = await run_scenario(
            scenario="partition_bridge_nats",
            title="Partition between B's bridge and NATS: latency, short blackhole, reset, "
            "long blackhole with the connection stranded",
            topology="2 in-process services (B's bridge through a TCP proxy), 1 nats-server, "
            "local PostgreSQL",
            config=fast_config(
                ping_interval=PING,
                max_outstanding_pings=OUTSTANDING,
                latency=LATENCY,
                blackhole_seconds=[SHORT, LONG],
            ),
            deployment=deployment,
            inject=inject,
            results_dir=results_dir,
            seed=seed,
            after=2.0,
            converge_timeout=60.0,
        )
        reconnects = connection.reconnects
    assert result.passed, result.failure_message()
    assert result.load["acked"] >= 100
    noticed = next(f for f in result.faults if f["kind"] == "dead link noticed by pings")
    assert noticed["after_seconds"] <= BOUND + 3.0  # bounded (event-loop lag aside)
    assert reconnects >= 2  # after the reset and after the long blackhole
