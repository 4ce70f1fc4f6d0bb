"""Several relays on one outbox table: every event once, per-record order kept,
a dead relay's leased rows taken over after the lease expires."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import nats
from nats.aio.client import Client
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bridge.envelope import Envelope
from bridge.outbox.capture import Outbox
from bridge.outbox.relay import OutboxRelay
from bridge.schema import outbox
from bridge.testing import NatsServer

from .conftest import (
    Widget,
    count_rows,
    eventually,
    message_count,
    outbox_order,
    provision_stream,
    publisher_for,
    relay_config,
    sessions_for,
    stream_bodies,
    stream_order,
)

RESOURCES = 200
ROUNDS = 25  # 200 creates + 24 rounds of 200 updates = 5,000 rows


async def test_two_relays_publish_5000_rows_once_in_per_record_order(
    database_url: str, engine: AsyncEngine, nc: Client, nats_server: NatsServer, unique: str
) -> None:
    cfg = relay_config(nats_server.url, unique, batch_size=128, poll_interval=0.1)
    await provision_stream(nc, cfg)
    box = Outbox(cfg)
    sessions = sessions_for(engine, box)
    # Two relays as two processes would have them: own engine, own NATS connection.
    engine_b = create_async_engine(database_url)
    nc_b = await nats.connect(nats_server.url)
    relays = [
        OutboxRelay(cfg, engine, publisher_for(nc, cfg), outbox=box, owner="relay-a"),
        OutboxRelay(cfg, engine_b, publisher_for(nc_b, cfg), owner="relay-b"),
    ]
    for relay in relays:
        await relay.start()
    try:
        # Relays run while the rows are committed: claims race with inserts.
        async with sessions.begin() as session:
            widgets = [Widget(name="r0") for _ in range(RESOURCES)]
            session.add_all(widgets)
        ids = [w.id for w in widgets]
        for round_no in range(1, ROUNDS):
            async with sessions.begin() as session:
                for widget in await session.scalars(select(Widget).where(Widget.id.in_(ids))):
                    widget.name = f"r{round_no}"

        async def all_sent() -> bool:
            return await count_rows(engine, "status = 'sent'") == RESOURCES * ROUNDS

        await eventually(all_sent, timeout=120.0, what="5,000 rows sent")
    finally:
        for relay in relays:
            await relay.stop(10.0)
        await nc_b.close()
        await engine_b.dispose()

    duplicates = sum(r.duplicates_total for r in relays)
    published = sum(r.published_total for r in relays)
    assert published - duplicates == RESOURCES * ROUNDS
    assert await message_count(nc, cfg) == RESOURCES * ROUNDS
    bodies = await stream_bodies(nc, cfg)
    assert len({b["event_id"] for b in bodies}) == RESOURCES * ROUNDS
    assert stream_order(bodies) == await outbox_order(engine)
    # Both relays really took part (the claim is shared, not one relay doing it all).
    assert all(r.published_total > 0 for r in relays)


async def test_dead_relays_rows_are_taken_over_after_the_lease(
    engine: AsyncEngine, nc: Client, nats_server: NatsServer, unique: str
) -> None:
    cfg = relay_config(nats_server.url, unique, lease=1.0)
    await provision_stream(nc, cfg)
    box = Outbox(cfg)
    async with sessions_for(engine, box).begin() as session:
        session.add_all([Widget(name=f"w{i}") for i in range(20)])

    dead = OutboxRelay(cfg, engine, publisher_for(nc, cfg), owner="dead")
    claimed = await dead.claim()  # ... and then the process dies: no publish, no mark
    assert len(claimed) == 20
    survivor = OutboxRelay(cfg, engine, publisher_for(nc, cfg), owner="survivor")
    assert await survivor.run_once() == 0  # leases still valid: nothing to take
    assert await message_count(nc, cfg) == 0

    async def taken_over() -> bool:
        await survivor.run_once()
        return await count_rows(engine, "status = 'sent'") == 20

    await eventually(taken_over, timeout=10.0, what="rows taken over after lease expiry")
    assert await message_count(nc, cfg) == 20

    # The "dead" relay was only slow and now publishes what it had claimed: the
    # server drops every copy (same Nats-Msg-Id) and it marks nothing (lease lost).
    assert await dead.publish_claimed(claimed) == 20
    assert dead.duplicates_total == 20
    assert await message_count(nc, cfg) == 20
    assert await count_rows(engine, "lease_owner IS NOT NULL") == 0


async def test_relay_cancelled_mid_batch_leaves_rows_for_the_next_relay(
    engine: AsyncEngine, nc: Client, nats_server: NatsServer, unique: str
) -> None:
    cfg = relay_config(nats_server.url, unique, lease=1.0, max_in_flight=2)
    await provision_stream(nc, cfg)
    real = publisher_for(nc, cfg)
    hang = asyncio.Event()

    class HangingPublisher:
        """Fault injection: the 5th publish never gets its PubAck (process frozen)."""

        calls = 0

        async def send(self, message: object) -> object:
            HangingPublisher.calls += 1
            if HangingPublisher.calls >= 5:
                hang.set()
                await asyncio.Event().wait()
            return await real.send(message)  # type: ignore[arg-type]

        async def acks(self, pending: Any) -> Any:
            return await real.acks(pending)

    box = Outbox(cfg)
    async with sessions_for(engine, box).begin() as session:
        session.add_all([Widget(name=f"w{i}") for i in range(30)])
    stuck = OutboxRelay(cfg, engine, HangingPublisher(), owner="stuck")  # type: ignore[arg-type]
    task = asyncio.create_task(stuck.run_once())
    await asyncio.wait_for(hang.wait(), 10.0)
    task.cancel()  # killed mid-batch: 4 published, none marked, all still leased
    await asyncio.gather(task, return_exceptions=True)
    assert await count_rows(engine, "lease_owner = 'stuck'") == 30

    survivor = OutboxRelay(cfg, engine, real, owner="survivor")

    async def taken_over() -> bool:
        await survivor.run_once()
        return await count_rows(engine, "status = 'sent'") == 30

    await eventually(taken_over, timeout=10.0, what="cancelled batch taken over")
    assert await message_count(nc, cfg) == 30  # the 4 early publishes deduplicated
    assert survivor.duplicates_total >= 4


async def test_claim_never_skips_ahead_of_an_earlier_row_of_the_same_record(
    engine: AsyncEngine, nc: Client, nats_server: NatsServer, unique: str
) -> None:
    cfg = relay_config(nats_server.url, unique)
    await provision_stream(nc, cfg)
    box = Outbox(cfg)
    sessions = sessions_for(engine, box)
    for i in range(3):  # record "r1": 3 rows; record "r2": 1 row
        async with sessions.begin() as session:
            await box.enqueue(session, _event("r1", i))
    async with sessions.begin() as session:
        await box.enqueue(session, _event("r2", 0))
    first_r1 = await engine_first_id(engine, "r1")
    relay = OutboxRelay(cfg, engine, publisher_for(nc, cfg), owner="me")

    # r1's first row waits for a retry → none of r1's rows may go; r2 may.
    await _set(engine, first_r1, "next_attempt_at = now() + interval '1 hour'")
    assert [r.resource_key[1] for r in await relay.claim()] == ["r2"]
    await _release_all(engine)

    # r1's first row is leased by another (live) relay → same.
    await _set(
        engine,
        first_r1,
        "next_attempt_at = now(), lease_owner = 'other', "
        "lease_expires_at = now() + interval '1 hour'",
    )
    assert [r.resource_key[1] for r in await relay.claim()] == ["r2"]
    await _release_all(engine)

    # A failed (given-up) earlier row does not block the record forever.
    await _set(engine, first_r1, "status = 'failed', lease_owner = NULL, lease_expires_at = NULL")
    assert sorted(r.resource_key[1] for r in await relay.claim()) == ["r1", "r1", "r2"]
    await _release_all(engine)

    # Back to pending and due: the whole chain goes, in id order.
    await _set(engine, first_r1, "status = 'pending'")
    # (Its retry time is now later than its successors' due time, so they follow
    # in the next round, never before it.)
    sent = [await relay.run_once() for _ in range(3)]
    assert sum(sent) == 4 and sent[0] >= 2  # r1's head and r2 first
    order = stream_order(await stream_bodies(nc, cfg))
    assert order == await outbox_order(engine)


async def test_claim_skips_a_record_whose_earlier_row_another_claim_is_locking(
    engine: AsyncEngine, nc: Client, nats_server: NatsServer, unique: str
) -> None:
    """The race the advisory lock prevents, forced without it: another claim has
    locked r1's first row but not committed its lease yet.  SKIP LOCKED skips that
    row, and the claim must then leave r1's later rows alone too."""
    cfg = relay_config(nats_server.url, unique)
    box = Outbox(cfg)
    sessions = sessions_for(engine, box)
    for i in range(3):
        async with sessions.begin() as session:
            await box.enqueue(session, _event("r1", i))
    async with sessions.begin() as session:
        await box.enqueue(session, _event("r2", 0))
    first_r1 = await engine_first_id(engine, "r1")
    relay = OutboxRelay(cfg, engine, publisher_for(nc, cfg), owner="me")

    async with engine.connect() as other:
        await other.execute(
            text("SELECT id FROM bridge_outbox WHERE id = :id FOR UPDATE"), {"id": first_r1}
        )
        claimed = await relay.claim()
        await other.rollback()
    assert [r.resource_key[1] for r in claimed] == ["r2"]


def _event(resource_id: str, n: int) -> Envelope:
    return Envelope(
        event_type="thing.updated",
        producer="test",
        resource_type="thing",
        resource_id=resource_id,
        payload={"n": n, "nonce": uuid.uuid4().hex},
    )


async def engine_first_id(engine: AsyncEngine, resource_id: str) -> int:
    async with engine.connect() as conn:
        return int(
            (
                await conn.execute(
                    text("SELECT min(id) FROM bridge_outbox WHERE resource_id = :r"),
                    {"r": resource_id},
                )
            ).scalar_one()
        )


async def _set(engine: AsyncEngine, row_id: int, assignments: str) -> None:
    async with engine.begin() as conn:
        statement = text(f"UPDATE bridge_outbox SET {assignments} WHERE id = :id")
        await conn.execute(statement, {"id": row_id})


async def _release_all(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            update(outbox)
            .where(outbox.c.lease_owner == "me")
            .values(lease_owner=None, lease_expires_at=None)
        )
