"""Relay liveness: a started relay leases rows as ``live:<owner>`` and holds a session
advisory lock while it runs; a ``live:`` lease whose lock is gone (its process died)
is claimable at once, a live relay's lease is respected until it expires.  A relay
keeps its leases (renewed) and its lock until every row it claimed is settled, so
neither a slow publish nor a graceful stop lets another relay publish a row again."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from nats.aio.client import Client
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bridge.outbox._store import LIVENESS_LOCK_CLASS
from bridge.outbox.capture import Outbox
from bridge.outbox.relay import OutboxRelay
from bridge.testing import NatsServer, to_plain_url
from bridge.transport.publisher import OutgoingMessage, Publisher

from .conftest import (
    Widget,
    count_rows,
    eventually,
    message_count,
    provision_stream,
    publisher_for,
    relay_config,
    scalar,
    sessions_for,
)


async def lease_all(engine: AsyncEngine, owner: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE bridge_outbox SET lease_owner = :owner, "
                "lease_expires_at = now() + interval '1 hour'"
            ),
            {"owner": owner},
        )


async def test_dead_owners_lease_frees_at_once_live_owners_lease_holds(
    engine: AsyncEngine, nc: Client, nats_server: NatsServer, unique: str, database_url: str
) -> None:
    cfg = relay_config(nats_server.url, unique, lease=3600.0)
    await provision_stream(nc, cfg)
    box = Outbox(cfg)
    async with sessions_for(engine, box).begin() as session:
        session.add(Widget(name="held by a live relay"))

    # A "live" owner that really holds its lock (another process, alive): respected.
    holder = await asyncpg.connect(to_plain_url(database_url))
    await holder.execute(
        "SELECT pg_advisory_lock($1, hashtext($2))", LIVENESS_LOCK_CLASS, "live:alive"
    )
    await lease_all(engine, "live:alive")
    relay = OutboxRelay(cfg, engine, publisher_for(nc, cfg), outbox=box)
    await relay.start()
    try:
        assert relay.owner.startswith("live:") and relay.listening
        relay.wake()
        assert await relay.run_once() == 0
        assert await count_rows(engine, "status = 'pending'") == 1

        # The holder dies (its session ends, the lock with it): the rows free at once,
        # an hour before the lease would have expired.
        await holder.close()
        relay.wake()

        async def sent() -> bool:
            return await count_rows(engine, "status = 'sent'") == 1

        await eventually(sent, timeout=10.0, what="dead owner's row published")
    finally:
        await relay.stop(5.0)
    assert await message_count(nc, cfg) == 1


async def test_plain_owner_leases_still_wait_for_expiry(
    engine: AsyncEngine, nc: Client, nats_server: NatsServer, unique: str
) -> None:
    cfg = relay_config(nats_server.url, unique)
    await provision_stream(nc, cfg)
    box = Outbox(cfg)
    async with sessions_for(engine, box).begin() as session:
        session.add(Widget(name="leased without liveness"))
    await lease_all(engine, "relay-without-liveness")
    relay = OutboxRelay(cfg, engine, publisher_for(nc, cfg), outbox=box)
    assert await relay.claim() == []  # an unexpired lease of an owner we cannot judge


# -- a relay keeps its leases and its liveness lock until it is done -------------------
class GatedPubAcks:
    """Fault injection: publishes wait for ``gate`` before reaching the server (a broker
    that delays PubAcks); every publish is counted per event id, across relays."""

    def __init__(self, real: Publisher, published: Counter[str]) -> None:
        self.real = real
        self.published = published
        self.started = asyncio.Event()
        self.gate = asyncio.Event()

    async def send(self, message: OutgoingMessage) -> Any:
        self.started.set()
        await self.gate.wait()
        self.published[message.headers["Nats-Msg-Id"]] += 1
        return await self.real.send(message)

    async def acks(self, pending: Any) -> Any:
        return await self.real.acks(pending)


class Counting:
    """A real publisher that counts publishes per event id."""

    def __init__(self, real: Publisher, published: Counter[str]) -> None:
        self.real = real
        self.published = published

    async def send(self, message: OutgoingMessage) -> Any:
        self.published[message.headers["Nats-Msg-Id"]] += 1
        return await self.real.send(message)

    async def acks(self, pending: Any) -> Any:
        return await self.real.acks(pending)


async def liveness_lock_held(engine: AsyncEngine, owner: str) -> bool:
    held = await scalar(
        engine,
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = :cls "
        "AND objid = hashtext(:owner)::oid AND objsubid = 2 AND granted",
        cls=LIVENESS_LOCK_CLASS,
        owner=owner,
    )
    return bool(held)


async def within(check: Callable[[], Awaitable[bool]], seconds: float) -> bool:
    """Whether ``check`` becomes true within ``seconds`` (polled; never raises)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.05)
    return False


async def test_graceful_stop_during_a_slow_publish_republishes_nothing(
    engine: AsyncEngine, nc: Client, nats_server: NatsServer, unique: str
) -> None:
    cfg = relay_config(nats_server.url, unique, lease=60.0)  # expiry plays no part here
    await provision_stream(nc, cfg)
    box = Outbox(cfg)
    async with sessions_for(engine, box).begin() as session:
        session.add_all([Widget(name=f"w{i}") for i in range(10)])
    published: Counter[str] = Counter()
    slow = GatedPubAcks(publisher_for(nc, cfg), published)
    relay = OutboxRelay(cfg, engine, slow, outbox=box)  # type: ignore[arg-type]
    other = OutboxRelay(cfg, engine, Counting(publisher_for(nc, cfg), published))  # type: ignore[arg-type]
    await relay.start()
    await asyncio.wait_for(slow.started.wait(), 10.0)
    stopping = asyncio.create_task(relay.stop(timeout=30.0))
    try:
        # Give a stop that lets go of its liveness lock too early the time to do so ...
        released_early = await within(lambda: _not(liveness_lock_held(engine, relay.owner)), 2.0)
        # ... while another relay looks for work: the rows in flight are not free.
        taken = await other.run_once()
        slow.gate.set()  # the PubAcks arrive
        await asyncio.wait_for(stopping, 30.0)
    finally:
        slow.gate.set()
        await asyncio.gather(stopping, return_exceptions=True)
    assert sorted(published.values()) == [1] * 10, f"published twice: {published}"
    assert taken == 0 and not released_early
    assert await count_rows(engine, "status = 'sent'") == 10
    assert await count_rows(engine, "lease_owner IS NOT NULL") == 0
    assert not await liveness_lock_held(engine, relay.owner)  # released at the very end
    assert await message_count(nc, cfg) == 10


async def test_a_publish_slower_than_the_lease_is_not_taken_over(
    engine: AsyncEngine, nc: Client, nats_server: NatsServer, unique: str
) -> None:
    cfg = relay_config(nats_server.url, unique, lease=2.0)  # renewed every 0.67 s
    await provision_stream(nc, cfg)
    box = Outbox(cfg)
    async with sessions_for(engine, box).begin() as session:
        session.add_all([Widget(name=f"w{i}") for i in range(3)])
    published: Counter[str] = Counter()
    slow = GatedPubAcks(publisher_for(nc, cfg), published)
    relay = OutboxRelay(cfg, engine, slow, outbox=box)  # type: ignore[arg-type]
    other = OutboxRelay(cfg, engine, Counting(publisher_for(nc, cfg), published))  # type: ignore[arg-type]
    await relay.start()
    try:
        await asyncio.wait_for(slow.started.wait(), 10.0)
        since = await scalar(engine, "SELECT now()")
        taken = 0

        async def three_leases_passed() -> bool:
            nonlocal taken
            taken += await other.run_once()  # a second relay keeps looking for work
            sql = "SELECT now() > CAST(:t AS timestamptz) + interval '6 seconds'"
            return bool(await scalar(engine, sql, t=since))

        await eventually(three_leases_passed, timeout=30.0, what="three lease periods")
        assert taken == 0, "a row in flight was taken over by a second relay"
        assert await count_rows(engine, "lease_owner = :o", o=relay.owner) == 3
        slow.gate.set()

        async def sent() -> bool:
            return await count_rows(engine, "status = 'sent'") == 3

        await eventually(sent, timeout=10.0, what="rows sent by their relay")
    finally:
        slow.gate.set()
        await relay.stop(10.0)
    assert sorted(published.values()) == [1] * 3
    assert relay.published_total == 3 and relay.duplicates_total == 0
    assert await count_rows(engine, "lease_owner IS NOT NULL") == 0


async def test_a_stop_that_times_out_releases_the_rows_it_holds(
    engine: AsyncEngine, nc: Client, nats_server: NatsServer, unique: str
) -> None:
    cfg = relay_config(nats_server.url, unique, lease=3600.0)
    await provision_stream(nc, cfg)
    box = Outbox(cfg)
    async with sessions_for(engine, box).begin() as session:
        session.add_all([Widget(name=f"w{i}") for i in range(5)])
    published: Counter[str] = Counter()
    stuck = GatedPubAcks(publisher_for(nc, cfg), published)  # the gate never opens
    relay = OutboxRelay(cfg, engine, stuck, outbox=box)  # type: ignore[arg-type]
    await relay.start()
    await asyncio.wait_for(stuck.started.wait(), 10.0)
    await relay.stop(timeout=3.0)  # the batch is cancelled: its rows are handed back
    assert await count_rows(engine, "lease_owner IS NOT NULL") == 0
    assert not await liveness_lock_held(engine, relay.owner)
    survivor = OutboxRelay(cfg, engine, Counting(publisher_for(nc, cfg), published))  # type: ignore[arg-type]
    assert await survivor.run_once() == 5
    assert sorted(published.values()) == [1] * 5
    assert await message_count(nc, cfg) == 5


async def _not(check: Awaitable[bool]) -> bool:
    return not await check
