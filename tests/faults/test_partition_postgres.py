"""Scenario: a network partition between System B's relay and its PostgreSQL database.

System B runs as a web instance (API and consumer, database direct, no relay) and a
relay-only instance whose database URL points at a :class:`tcp_proxy.TcpProxy`; all of
System A talks to its stores directly.  Under load on both sides the link goes
through, in turn:

1. ``latency`` 50 ms each way (every claim and settle round trip slows down);
2. ``blackhole`` 3 s, healed: held queries complete late — the partition healed before
   TCP gave up;
3. ``reset`` 1 s: every connection, open or new, is reset; then healed;
4. ``blackhole`` 3 s, then the held connections are *stranded* — the path they used is
   gone for good (a firewall that forgot them, a failed-over primary): the server ends
   their sessions, the relay hears nothing on them ever again, not even a reset, while
   new connections pass (healed).  Whatever the relay was waiting for on such a
   connection (a claim, a settle, the pool's pre-ping, the LISTEN connection) never
   answers: only the relay's own timeouts can get it out.

B's API goes on committing writes (and outbox rows) the whole time; the relay must pick
them up once it reaches its database again.  Verdict: 0 lost, 0 applied twice,
converged, and how long after the last heal.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from fault_partition import liveness_lock_held, relay_partition_pair
from fault_scenario import FaultLog, run_scenario
from fault_stack import fast_config

from bridge.testing import NatsServer, PostgresServer

pytestmark = pytest.mark.faults

LATENCY = 0.05
BLACKHOLE = 3.0


async def test_partition_between_a_relay_and_postgres(
    own_nats: NatsServer, postgres: PostgresServer, unique: str, results_dir: Path, seed: int
) -> None:
    stream = f"faults-{unique}"
    async with AsyncExitStack() as stack:
        deployment, proxy, relay = await relay_partition_pair(
            stack, postgres, unique, stream=stream, nats_urls=(own_nats.url,)
        )
        target = f"{deployment.b.app}'s relay ↔ PostgreSQL"

        async def inject(faults: FaultLog) -> None:
            proxy.add_latency(LATENCY)
            faults.note("latency", target, seconds_each_way=LATENCY)
            await asyncio.sleep(2.0)
            proxy.blackhole()
            faults.note("blackhole", target, connections=proxy.connections)
            await asyncio.sleep(BLACKHOLE)
            proxy.pass_through()
            faults.note("heal (held bytes flow on)", target)
            await asyncio.sleep(1.0)
            proxy.reset()
            faults.note("reset", target)
            await asyncio.sleep(1.0)
            proxy.pass_through()
            faults.note("heal", target)
            await asyncio.sleep(1.0)
            proxy.blackhole()
            faults.note("blackhole", target, connections=proxy.connections)
            await asyncio.sleep(BLACKHOLE)
            stranded = proxy.strand()
            proxy.pass_through()
            faults.heal(target, stranded=stranded, note="held connections dead for good")

        result = await run_scenario(
            scenario="partition_relay_postgres",
            title="Partition between B's relay and PostgreSQL: latency, blackhole, reset, "
            "blackhole with the connections stranded",
            topology="2 in-process services (B: web + relay-only instance, the relay's "
            "database through a TCP proxy), 1 nats-server, local PostgreSQL",
            config=fast_config(relay_lease=5.0, latency=LATENCY, blackhole_seconds=BLACKHOLE),
            deployment=deployment,
            inject=inject,
            results_dir=results_dir,
            seed=seed,
            after=2.0,
            converge_timeout=60.0,
        )
        # The relay's LISTEN connection came back too: its liveness lock is held again.
        owner = relay.app.state.service.bridge.relay.owner
        lock_lost: str | None = None
        try:
            await liveness_lock_held(deployment.b.database_url, owner, timeout=20.0)
        except AssertionError as exc:
            lock_lost = str(exc)
    assert result.passed, result.failure_message()
    assert lock_lost is None, lock_lost
    assert result.load["acked"] >= 100
    # The relay really reconnected: new connections after the reset and the strand.
    assert proxy.accepted >= 3
    assert result.faults[-2]["kind"] == "heal" and result.faults[-2]["stranded"] >= 1
