"""Outbox → relay → JetStream end to end, on a real nats-server and PostgreSQL.

Rollback → nothing; commit → exactly one stream message per change whose body is
the stored envelope; a commit whose process "dies" before any relay runs is
published exactly once by the next relay; wake-ups come from the in-process commit
listener and from LISTEN/NOTIFY, not only from polling.
"""

from __future__ import annotations

import asyncio
from typing import Any

from nats.aio.client import Client
from sqlalchemy import literal_column, select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bridge.outbox._pipeline import BATCHES_IN_FLIGHT
from bridge.outbox.body import envelope_sql
from bridge.outbox.capture import Outbox
from bridge.outbox.relay import OutboxRelay
from bridge.schema import outbox
from bridge.testing import NatsServer

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
    stream_bodies,
)


async def stored_payloads(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        result = await conn.execute(
            select(literal_column(envelope_sql())).select_from(outbox).order_by(outbox.c.id)
        )
        return [dict(p) for p in result.scalars()]


async def test_commit_publishes_one_envelope_per_change_and_rollback_none(
    engine: AsyncEngine, nc: Client, nats_server: NatsServer, unique: str
) -> None:
    cfg = relay_config(nats_server.url, unique)
    await provision_stream(nc, cfg)
    box = Outbox(cfg)
    relay = OutboxRelay(cfg, engine, publisher_for(nc, cfg), outbox=box)
    sessions = sessions_for(engine, box)
    await relay.start()
    try:
        async with sessions() as session:
            session.add(Widget(name="never"))
            await session.flush()
            await session.rollback()
        async with sessions.begin() as session:
            widget = Widget(name="one")
            session.add(widget)
        async with sessions.begin() as session:
            w = await session.get(Widget, widget.id)
            assert w is not None
            w.name = "two"
        async with sessions.begin() as session:
            await session.delete(await session.get(Widget, widget.id))

        async def drained() -> bool:
            return await count_rows(engine, "status = 'sent'") == 3

        await eventually(drained, what="3 rows sent")
    finally:
        await relay.stop(5.0)

    bodies = await stream_bodies(nc, cfg)
    assert await message_count(nc, cfg) == 3
    assert bodies == await stored_payloads(engine)
    assert [b["event_type"] for b in bodies] == [
        "widget.created",
        "widget.updated",
        "widget.deleted",
    ]
    assert [b["payload"]["name"] for b in bodies] == ["one", "two", "two"]
    assert all(b["producer"] == cfg.app_name and b["resource_id"] == widget.id for b in bodies)
    seqs = await scalar(engine, "SELECT array_agg(stream_seq ORDER BY id) FROM bridge_outbox")
    assert seqs == [1, 2, 3]
    stats = await relay.stats()
    assert (stats.pending, stats.sent, stats.failed) == (0, 3, 0)
    assert stats.published_total == 3 and stats.oldest_pending_age_seconds is None


async def test_commit_then_crash_is_published_once_by_the_next_relay(
    database_url: str, engine: AsyncEngine, nc: Client, nats_server: NatsServer, unique: str
) -> None:
    cfg = relay_config(nats_server.url, unique)
    await provision_stream(nc, cfg)
    # The "crashed" process: it committed and no relay ever ran (its engine is gone).
    crashed = create_async_engine(database_url)
    box = Outbox(cfg)
    async with sessions_for(crashed, box).begin() as session:
        session.add_all([Widget(name=f"w{i}") for i in range(5)])
    await crashed.dispose()

    relay = OutboxRelay(cfg, engine, publisher_for(nc, cfg))
    assert await relay.run_once() == 5
    assert await relay.run_once() == 0
    # A second relay, e.g. after a restart, finds nothing left to publish.
    assert await OutboxRelay(cfg, engine, publisher_for(nc, cfg)).run_once() == 0
    assert await message_count(nc, cfg) == 5
    assert relay.duplicates_total == 0


async def test_wakes_on_commit_listener_and_on_notify_not_polling(
    engine: AsyncEngine, nc: Client, nats_server: NatsServer, unique: str
) -> None:
    # Polling every 60 s: anything published within seconds was woken otherwise.
    cfg = relay_config(nats_server.url, unique, poll_interval=60.0)
    await provision_stream(nc, cfg)
    box = Outbox(cfg)
    relay = OutboxRelay(cfg, engine, publisher_for(nc, cfg), outbox=box)
    await relay.start()
    try:
        await eventually(lambda: _listening(relay), what="relay LISTEN established")
        # 1. In-process: the relay's own outbox calls its commit listener (and
        # NOTIFYs as well; case 2 isolates NOTIFY).
        async with sessions_for(engine, box).begin() as session:
            session.add(Widget(name="in process"))
        await eventually(lambda: _count_is(nc, cfg, 1), timeout=5.0, what="commit wake-up")

        # 2. Another "process": a different Outbox the relay does not listen to;
        # only PostgreSQL's NOTIFY (delivered on commit) can wake the relay.
        other = Outbox(cfg)
        async with sessions_for(engine, other).begin() as session:
            session.add(Widget(name="other process"))
        await eventually(lambda: _count_is(nc, cfg, 2), timeout=5.0, what="NOTIFY wake-up")
    finally:
        await relay.stop(5.0)
    assert not relay.listening


async def test_listen_connection_is_re_established_after_it_drops(
    engine: AsyncEngine, nc: Client, nats_server: NatsServer, unique: str
) -> None:
    cfg = relay_config(nats_server.url, unique, poll_interval=60.0)
    await provision_stream(nc, cfg)
    relay = OutboxRelay(cfg, engine, publisher_for(nc, cfg))  # no in-process listener
    await relay.start()
    try:
        await eventually(lambda: _listening(relay), what="relay LISTEN established")
        # Kill the LISTEN backend, as a database restart or a network cut would.
        old_pid = await _listen_backend(engine)
        assert await scalar(engine, "SELECT pg_terminate_backend(:pid)", pid=old_pid) is True

        async def relistened() -> bool:
            pid = await _listen_backend(engine)
            return relay.listening and pid is not None and pid != old_pid

        await eventually(relistened, timeout=10.0, what="LISTEN re-established")

        # A commit in "another process" wakes the relay through the new connection.
        async with sessions_for(engine, Outbox(cfg)).begin() as session:
            session.add(Widget(name="after the reconnect"))
        await eventually(lambda: _count_is(nc, cfg, 1), timeout=5.0, what="NOTIFY wake-up")
    finally:
        await relay.stop(5.0)


async def _listen_backend(engine: AsyncEngine) -> int | None:
    pid = await scalar(
        engine,
        "SELECT pid FROM pg_stat_activity "
        "WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    return None if pid is None else int(pid)


async def _listening(relay: OutboxRelay) -> bool:
    return relay.listening


async def _count_is(nc: Client, cfg: Any, n: int) -> bool:
    return await message_count(nc, cfg) == n


async def test_stop_finishes_the_batch_in_flight(
    engine: AsyncEngine, nc: Client, nats_server: NatsServer, unique: str
) -> None:
    cfg = relay_config(nats_server.url, unique, batch_size=50, max_in_flight=4)
    await provision_stream(nc, cfg)
    real = publisher_for(nc, cfg)
    started = asyncio.Event()

    class SlowPublisher:
        """Fault injection: every publish takes 20 ms longer (a slow broker)."""

        async def send(self, message: Any) -> Any:
            started.set()
            await asyncio.sleep(0.02)
            return await real.send(message)

        async def acks(self, pending: Any) -> Any:
            return await real.acks(pending)

    box = Outbox(cfg)
    async with sessions_for(engine, box).begin() as session:
        session.add_all([Widget(name=f"w{i}") for i in range(400)])
    relay = OutboxRelay(cfg, engine, SlowPublisher(), outbox=box)  # type: ignore[arg-type]
    await relay.start()
    await asyncio.wait_for(started.wait(), 10.0)
    await relay.stop(timeout=10.0)

    assert not relay.running
    # The batches in flight completed: PubAcks received and rows marked, nothing
    # left leased; no new batch was claimed after stop().
    leased = await count_rows(engine, "lease_owner IS NOT NULL")
    sent = await count_rows(engine, "status = 'sent'")
    assert leased == 0
    assert 0 < sent <= 50 * (BATCHES_IN_FLIGHT + 1) < 400
    assert await message_count(nc, cfg) == sent
