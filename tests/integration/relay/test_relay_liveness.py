"""Relay liveness: a started relay leases rows as ``live:<owner>`` and holds a session
advisory lock while it runs; a ``live:`` lease whose lock is gone (its process died)
is claimable at once, a live relay's lease is respected until it expires."""

from __future__ import annotations

import asyncpg
from nats.aio.client import Client
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bridge.outbox import Outbox
from bridge.outbox_store import LIVENESS_LOCK_CLASS
from bridge.relay import OutboxRelay
from bridge.testing import NatsServer, to_plain_url

from .conftest import (
    Widget,
    count_rows,
    eventually,
    message_count,
    provision_stream,
    publisher_for,
    relay_config,
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
