"""The relay on a dead PostgreSQL connection: it must find out by itself, in bounded time.

A partition that outlives a connection's path (a firewall that forgot it, a
failed-over primary) leaves a TCP connection that is dead without a FIN or an RST:
:meth:`tcp_proxy.TcpProxy.strand`.  asyncpg has no timeout of its own on a query, a
commit or SQLAlchemy's pool pre-ping, so a relay that waits on such a connection
waits forever — found by ``test_partition_postgres`` (B's outbox stayed ``pending``
and the sides never converged).  These tests pin the two places down, fast:

- a claim (and any relay transaction) is bounded by ``relay.lease`` — a transaction
  slower than the lease is pointless anyway, the leases it takes would be expired when
  it commits — then fails with a ``TimeoutError`` naming the database, and the next
  one gets a fresh connection; also when the link dies half way through the pool's
  pre-ping, where one cancellation is not enough (:class:`bridge._support.deadline.Deadline`);
- the LISTEN connection (wake-ups and the relay's liveness lock) is probed every
  ``check_interval``; a dead one is dropped and re-established — past a half-dead
  pooled connection too — and notifications flow again;
- stopping a listener whose connection died unnoticed returns within its timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest
from fault_partition import start_proxy, via_proxy, wait_for
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from tcp_proxy import TcpProxy

from bridge import schema
from bridge.config import BridgeConfig, RelayOptions
from bridge.outbox import _listen as pg_listen
from bridge.outbox._listen import NotifyListener
from bridge.outbox.relay import OutboxRelay
from bridge.transport.publisher import Publisher

LEASE = 2.0
#: SQLAlchemy closes a timed-out connection gracefully for up to 2 s before aborting it.
CLOSE_GRACE = 2.0


@pytest.fixture
async def proxied(database_url: str) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine, TcpProxy]]:
    """(engine through the proxy, direct engine, proxy) on one migrated database."""
    async with AsyncExitStack() as stack:
        direct = create_async_engine(database_url)
        stack.push_async_callback(direct.dispose)
        await schema.create_all(direct)
        proxy = await start_proxy(database_url)
        # Like the services' engine: a pool with pre-ping (bridge users' usual setup).
        engine = create_async_engine(via_proxy(database_url, proxy), pool_pre_ping=True)
        stack.push_async_callback(engine.dispose)
        stack.push_async_callback(proxy.stop)  # first: no dispose waits on a dead socket
        yield engine, direct, proxy


def strand_all(proxy: TcpProxy) -> int:
    """The partition that outlives the connections: dead for good, new ones pass."""
    proxy.blackhole()
    stranded = proxy.strand()
    proxy.pass_through()
    return stranded


async def test_a_claim_on_a_dead_connection_times_out_and_the_next_one_reconnects(
    proxied: tuple[AsyncEngine, AsyncEngine, TcpProxy], nats_server, unique: str
) -> None:
    engine, _direct, proxy = proxied
    config = BridgeConfig(
        app_name=f"a{unique}",
        destination_app=f"b{unique}",
        stream_name=f"s{unique}",
        nats_urls=(nats_server.url,),
        relay=RelayOptions(lease=LEASE, retry_base=0.05, retry_max=0.5),
    )
    import nats

    nc = await nats.connect(nats_server.url)
    try:
        relay = OutboxRelay(config, engine, Publisher(nc.jetstream(), stream=config.stream_name))
        assert await relay.claim() == []  # a pooled connection through the proxy
        assert strand_all(proxy) >= 1

        started = time.monotonic()
        with pytest.raises(TimeoutError, match="database"):
            # The guard only keeps a hanging relay from hanging the test.
            await asyncio.wait_for(relay.claim(), LEASE + CLOSE_GRACE + 10)
        assert time.monotonic() - started < LEASE + CLOSE_GRACE + 2
        assert await asyncio.wait_for(relay.claim(), 10) == []  # a fresh connection
    finally:
        await nc.close()


async def test_a_claim_whose_pool_pre_ping_dies_half_way_times_out_too(
    database_url: str, nats_server, unique: str
) -> None:
    # Found as an intermittent hang of test_partition_postgres: the link died after the
    # pre-ping's BEGIN was answered and before its ``SELECT``.  One cancellation is not
    # enough there — SQLAlchemy's ping rolls back in a ``finally``, and asyncpg waits
    # without limit for the dead server to acknowledge the cancelled query first.
    async with AsyncExitStack() as stack:
        direct = create_async_engine(database_url)
        stack.push_async_callback(direct.dispose)
        await schema.create_all(direct)
        proxy = await start_proxy(database_url)
        engine = create_async_engine(
            via_proxy(database_url, proxy), pool_pre_ping=True, pool_size=1, max_overflow=0
        )
        stack.push_async_callback(engine.dispose)
        stack.push_async_callback(proxy.stop)
        import nats

        nc = await nats.connect(nats_server.url)
        stack.push_async_callback(nc.close)
        config = BridgeConfig(
            app_name=f"a{unique}",
            destination_app=f"b{unique}",
            stream_name=f"s{unique}",
            nats_urls=(nats_server.url,),
            relay=RelayOptions(lease=LEASE, retry_base=0.05, retry_max=0.5),
        )
        relay = OutboxRelay(config, engine, Publisher(nc.jetstream(), stream=config.stream_name))
        assert await relay.claim() == []  # the pool's one connection, idle now
        assert proxy.strand_after_reply() == 1  # BEGIN is answered, the ping's SELECT is not

        started = time.monotonic()
        with pytest.raises(TimeoutError, match="database"):
            await asyncio.wait_for(relay.claim(), LEASE + CLOSE_GRACE + 10)
        assert time.monotonic() - started < LEASE + CLOSE_GRACE + 3
        assert await asyncio.wait_for(relay.claim(), 10) == []  # the dead one was discarded


async def test_a_dead_listen_connection_is_replaced_and_notifications_flow_again(
    proxied: tuple[AsyncEngine, AsyncEngine, TcpProxy],
) -> None:
    engine, direct, proxy = proxied
    woken = 0

    def on_notify() -> None:
        nonlocal woken
        woken += 1

    listener = NotifyListener(engine, "faults_listen", on_notify, retry_max=0.2, check_interval=0.5)
    await listener.start()
    try:
        assert await listener.wait_listening(10)
        await wait_for(lambda: woken == 1, 5, "the first connect's wake-up")
        assert strand_all(proxy) >= 1

        # Re-established (a wake-up follows every reconnect): the dead one was noticed.
        took = await wait_for(lambda: woken >= 2, 15, "LISTEN re-established after a dead link")
        assert listener.listening
        before = woken
        async with direct.begin() as conn:
            await conn.execute(text("NOTIFY faults_listen"))
        await wait_for(lambda: woken > before, 5, "a NOTIFY on the new connection")
        assert took < 10
    finally:
        await asyncio.wait_for(listener.stop(5), 10)


async def test_listen_reconnects_past_a_pooled_connection_whose_pre_ping_dies_half_way(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The reconnect checks a pooled connection out; its pre-ping's BEGIN is answered, its
    # SELECT never is — one cancellation is absorbed there (see the claim test above).
    monkeypatch.setattr(pg_listen, "SETUP_TIMEOUT", 1.0)
    async with AsyncExitStack() as stack:
        proxy = await start_proxy(database_url)
        engine = create_async_engine(
            via_proxy(database_url, proxy), pool_pre_ping=True, pool_size=2, max_overflow=0
        )
        stack.push_async_callback(engine.dispose)
        stack.push_async_callback(proxy.stop)
        woken = 0

        def on_notify() -> None:
            nonlocal woken
            woken += 1

        listener = NotifyListener(
            engine, "faults_half", on_notify, retry_max=0.2, check_interval=0.5
        )
        await listener.start()
        stack.push_async_callback(listener.stop, 5.0)
        assert await listener.wait_listening(10)
        async with engine.connect() as conn:  # one idle pooled connection for the reconnect
            await conn.execute(text("SELECT 1"))
        # LISTEN's next probe is answered, the one after is not; the idle connection's
        # next answer is its pre-ping's BEGIN.
        assert proxy.strand_after_reply() == 2
        await wait_for(lambda: woken >= 2, 20, "LISTEN re-established past the half-dead pool")
        assert listener.listening


async def test_stopping_a_listener_on_a_dead_connection_does_not_hang(
    proxied: tuple[AsyncEngine, AsyncEngine, TcpProxy],
) -> None:
    # The relay's stop() stops its listener: UNLISTEN on a dead connection never answers,
    # and the cancellation after the stop timeout was absorbed by asyncpg (see above).
    engine, _direct, proxy = proxied
    listener = NotifyListener(engine, "faults_stop", lambda: None, check_interval=30.0)
    await listener.start()
    assert await listener.wait_listening(10)
    assert strand_all(proxy) >= 1  # not noticed yet: the next probe is 30 s away
    started = time.monotonic()
    await asyncio.wait_for(listener.stop(1.0), 15)  # the guard only keeps a hang bounded
    assert time.monotonic() - started < 1.0 + CLOSE_GRACE + 2
