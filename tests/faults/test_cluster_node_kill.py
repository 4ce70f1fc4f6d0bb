"""Scenario 6: a 3-node NATS cluster, stream with 3 replicas; the stream leader is killed.

Both services run in this process with ``stream_replicas=3`` (a
:class:`~bridge.config.BridgeConfig` option the services' environment does not expose,
so it is passed as an override to the same ``create_app``) and all three server URLs.
Under load the node leading the stream is killed with SIGKILL: the clients connected to
it reconnect to another node, the remaining two elect a new leader (quorum 2 of 3), and
publishes, fetches and acks in flight at that moment time out and are retried.  The
node is restarted a few seconds later and catches up.  Nothing acknowledged may be lost,
nothing applied twice.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator, Sequence
from contextlib import AsyncExitStack
from pathlib import Path

import nats
import pytest
from fault_scenario import FaultLog, run_scenario
from fault_stack import fast_config, in_process_pair

from bridge.config import RelayOptions
from bridge.testing import NatsServer, PostgresServer, nats_cluster

pytestmark = pytest.mark.faults

DOWN = 3.0
# FAST's relay (0.05 s doubling to 0.5 s) with only 3 attempts: an election takes
# seconds, so this fails unless unavailability (no PubAck, no leader) is retried for as
# long as it lasts instead of counting towards max_attempts (bridge.outbox.relay, "Retry").
RELAY = RelayOptions(poll_interval=0.2, lease=5.0, retry_base=0.05, retry_max=0.5, max_attempts=3)


@pytest.fixture
def cluster() -> Iterator[list[NatsServer]]:
    nodes = nats_cluster(3)
    try:
        for node in nodes:
            node.start()
        yield nodes
    finally:
        for node in nodes:
            node.cleanup()


async def wait_jetstream(urls: Sequence[str], timeout: float = 30.0) -> None:
    """Until the cluster's JetStream answers (a meta leader was elected)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            nc = await nats.connect(list(urls), connect_timeout=1, max_reconnect_attempts=1)
            try:
                await nc.jetstream(timeout=2).account_info()
                return
            finally:
                await nc.close()
        except Exception as exc:  # not ready yet: keep polling
            last = exc
            await asyncio.sleep(0.3)
    raise AssertionError(f"JetStream cluster not ready after {timeout}s: {last!r}")


async def stream_leader(
    urls: Sequence[str], stream: str, *, not_: str | None = None, timeout: float = 30.0
) -> str:
    """The stream's current leader (other than ``not_``), polled with a deadline."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            nc = await nats.connect(list(urls), connect_timeout=1, max_reconnect_attempts=1)
            try:
                info = await nc.jetstream(timeout=2).stream_info(stream)
            finally:
                await nc.close()
            last = info.cluster
            if info.cluster is not None and info.cluster.leader not in (None, not_):
                assert len(info.cluster.replicas or []) == 2, info.cluster  # R3
                return str(info.cluster.leader)
        except Exception as exc:  # no leader yet (election): keep polling
            last = exc
        await asyncio.sleep(0.2)
    raise AssertionError(f"no stream leader after {timeout}s: {last!r}")


async def test_cluster_stream_leader_killed_mid_load(
    cluster: list[NatsServer],
    postgres: PostgresServer,
    unique: str,
    results_dir: Path,
    seed: int,
) -> None:
    stream = f"faults-{unique}"
    urls = tuple(node.url for node in cluster)
    await wait_jetstream(urls)
    overrides = {"stream_replicas": 3, "relay": RELAY}
    async with AsyncExitStack() as stack:
        deployment = await in_process_pair(
            stack, postgres, unique, stream=stream, nats_urls=urls, **overrides
        )

        async def inject(faults: FaultLog) -> None:
            leader = await stream_leader(urls, stream)
            node = next(n for n in cluster if n.name == leader)
            await asyncio.to_thread(node.stop, signal.SIGKILL)
            faults.note("kill -9", f"stream leader {leader}")
            killed = time.monotonic()
            alive = [n.url for n in cluster if n.running]
            new_leader = await stream_leader(alive, stream, not_=leader)
            faults.note("new leader", new_leader, elected_after=round(time.monotonic() - killed, 2))
            await asyncio.sleep(max(0.0, DOWN - (time.monotonic() - killed)))
            await asyncio.to_thread(node.start)
            faults.note("restart", leader, down_seconds=round(time.monotonic() - killed, 2))

        result = await run_scenario(
            scenario="cluster_leader_kill9",
            title="3-node NATS cluster, stream replicas 3, stream leader killed (-9) mid-load",
            topology="2 in-process services, 3-node nats cluster (R3 stream), local PostgreSQL",
            config=fast_config(
                stream_replicas=3,
                relay_retry="0.05 s doubling to 0.5 s, max_attempts 3 (rejections only)",
            ),
            deployment=deployment,
            inject=inject,
            results_dir=results_dir,
            seed=seed,
            after=3.0,
            converge_timeout=90.0,
        )
    assert result.passed, result.failure_message()
    assert result.load["acked"] >= 100
    killed = next(f for f in result.faults if f["kind"] == "kill -9")["target"]
    elected = next(f for f in result.faults if f["kind"] == "new leader")["target"]
    assert elected not in killed  # leadership really moved
