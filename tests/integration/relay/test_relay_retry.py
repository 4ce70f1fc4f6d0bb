"""Failed publishes: retried with capped exponential backoff; unavailability (no
stream, no PubAck) retried for as long as it lasts, a rejected message 'failed' after
max_attempts, re-queueable; one record's failure does not hold up the others;
retention deletes old sent rows."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

from nats.aio.client import Client
from nats.js.api import StreamConfig
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bridge._support.backoff import backoff_ceiling
from bridge.errors import PublishError
from bridge.outbox.capture import Outbox
from bridge.outbox.relay import OutboxRelay, RelayStats
from bridge.testing import NatsServer
from bridge.transport.publisher import OutgoingMessage, PendingAck, PublishResult

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


async def test_missing_stream_is_unavailability_retried_past_max_attempts_until_it_exists(
    engine: AsyncEngine, nc: Client, nats_server: NatsServer, unique: str
) -> None:
    # No stream (no responders) says nothing about the row: it must not become 'failed'
    # after max_attempts, and it goes out on its own once the stream exists.
    cfg = relay_config(
        nats_server.url, unique, max_attempts=3, retry_base=0.05, retry_max=0.1, poll_interval=60.0
    )
    box = Outbox(cfg)
    relay = OutboxRelay(cfg, engine, publisher_for(nc, cfg), outbox=box)
    await relay.start()
    try:
        async with sessions_for(engine, box).begin() as session:
            session.add(Widget(name="early bird"))  # the stream does not exist yet

        async def retried_past_max() -> bool:
            return await count_rows(engine, "status = 'pending' AND attempts >= 6") == 1

        await eventually(retried_past_max, timeout=10.0, what="retries past max_attempts")
        assert await count_rows(engine, "status = 'failed'") == 0
        last_error = await scalar(engine, "SELECT last_error FROM bridge_outbox")
        assert "stream" in last_error.lower()
        stats = await relay.stats()
        assert (stats.failed, stats.sent) == (0, 0) and stats.publish_failures_total >= 6

        await provision_stream(nc, cfg)  # the operator fixes it; nobody re-queues anything

        async def sent() -> bool:
            return await count_rows(engine, "status = 'sent'") == 1

        await eventually(sent, timeout=5.0, what="row sent once the stream exists")
    finally:
        await relay.stop(5.0)
    assert await message_count(nc, cfg) == 1


async def test_a_rejected_message_fails_after_max_attempts_then_requeue_publishes(
    engine: AsyncEngine, nc: Client, nats_server: NatsServer, unique: str
) -> None:
    # The stream refuses the message itself (over its max_msg_size): a JetStream 400.
    cfg = relay_config(
        nats_server.url, unique, max_attempts=3, retry_base=0.05, retry_max=0.1, poll_interval=60.0
    )
    js = nc.jetstream()
    subjects = list(cfg.subjects.stream_subjects())
    await js.add_stream(StreamConfig(name=cfg.stream_name, subjects=subjects, max_msg_size=64))
    box = Outbox(cfg)
    relay = OutboxRelay(cfg, engine, publisher_for(nc, cfg), outbox=box)
    await relay.start()
    try:
        async with sessions_for(engine, box).begin() as session:
            session.add(Widget(name="too big for this stream"))

        async def gave_up() -> bool:
            return await count_rows(engine, "status = 'failed'") == 1

        await eventually(gave_up, timeout=10.0, what="row failed after max_attempts")
        assert await scalar(engine, "SELECT attempts FROM bridge_outbox") == 3
        last_error = await scalar(engine, "SELECT last_error FROM bridge_outbox")
        assert "rejected" in last_error.lower() and "size" in last_error.lower()
        stats = await relay.stats()
        assert (stats.pending, stats.failed, stats.sent) == (0, 1, 0)
        assert stats.publish_failures_total == 3 and stats.published_total == 0

        await js.update_stream(StreamConfig(name=cfg.stream_name, subjects=subjects))
        assert await relay.requeue_failed() == 1
        assert await relay.requeue_failed() == 0  # nothing left in 'failed'

        async def sent() -> bool:
            return await count_rows(engine, "status = 'sent'") == 1

        await eventually(sent, timeout=5.0, what="requeued row sent")
    finally:
        await relay.stop(5.0)
    assert await message_count(nc, cfg) == 1


async def test_a_message_over_max_payload_is_refused_before_sending_and_blocks_only_its_record(
    engine: AsyncEngine, nc: Client, nats_server: NatsServer, unique: str
) -> None:
    # Headers + body over the server's max_payload: the publisher refuses it before
    # writing (the server would close the connection); the other records of the same
    # wave go out, its own later row waits, and after max_attempts it is failed.
    cfg = relay_config(nats_server.url, unique, max_attempts=1, poll_interval=60.0)
    await provision_stream(nc, cfg)
    box = Outbox(cfg)
    async with sessions_for(engine, box).begin() as session:
        huge, other = Widget(name="huge"), Widget(name="fine")
        session.add_all([huge, other])
    async with sessions_for(engine, box).begin() as session:
        (await session.get(Widget, huge.id)).name = "next"  # type: ignore[union-attr]
    async with engine.begin() as conn:  # the body fits; body + headers do not
        await conn.execute(
            text(
                "UPDATE bridge_outbox SET headers = jsonb_build_object('X-Pad', repeat('x', :n))"
                " WHERE id = (SELECT min(id) FROM bridge_outbox WHERE resource_id = :id)"
            ),
            {"n": nc.max_payload - 200, "id": huge.id},
        )
    relay = OutboxRelay(cfg, engine, publisher_for(nc, cfg))

    assert await relay.run_once() == 1  # only `other`: the huge head failed, its next row waited
    failed = await scalar(engine, "SELECT last_error FROM bridge_outbox WHERE status = 'failed'")
    assert "max_payload" in failed
    assert await count_rows(engine, "status = 'pending'") == 1
    assert await relay.run_once() == 1  # a failed row no longer blocks its record
    assert [b["resource_id"] for b in await stream_bodies(nc, cfg)] == [other.id, huge.id]
    assert await relay.stats() == RelayStats(
        pending=0,
        sent=2,
        failed=1,
        retried=0,
        oldest_pending_age_seconds=None,
        published_total=2,
        publish_failures_total=1,
    )


class FailingFor:
    """Fault injection: publishes of chosen records fail; the rest go to the real server."""

    def __init__(self, real: Any, failing: set[str]) -> None:
        self.real = real
        self.failing = failing
        self.calls: list[str] = []

    async def send(self, message: OutgoingMessage) -> PendingAck:
        resource_id = str(json.loads(message.data)["resource_id"])
        self.calls.append(resource_id)
        if resource_id in self.failing:
            raise PublishError("injected: no PubAck")
        pending: PendingAck = await self.real.send(message)
        return pending

    async def acks(self, pending: Sequence[PendingAck]) -> list[PublishResult | PublishError]:
        results: list[PublishResult | PublishError] = await self.real.acks(pending)
        return results


async def test_backoff_grows_per_attempt_and_rows_wait_for_their_time(
    engine: AsyncEngine, nc: Client, nats_server: NatsServer, unique: str
) -> None:
    cfg = relay_config(nats_server.url, unique, retry_base=0.2, retry_max=0.8, max_attempts=50)
    await provision_stream(nc, cfg)
    box = Outbox(cfg)
    async with sessions_for(engine, box).begin() as session:
        widget = Widget(name="flaky")
        session.add(widget)
    publisher = FailingFor(publisher_for(nc, cfg), {widget.id})
    relay = OutboxRelay(cfg, engine, publisher)  # type: ignore[arg-type]

    deadline = time.monotonic() + 20.0
    for attempt in range(1, 6):
        while len(publisher.calls) < attempt:
            assert time.monotonic() < deadline, "retry never came"
            await relay.run_once()
            if len(publisher.calls) < attempt:
                _, wait = await _retry_state(engine)
                if wait > 0.1:  # clearly not due yet → the claim must not hand it out
                    assert await relay.claim() == []
                await asyncio.sleep(0.02)
        row_attempts, wait = await _retry_state(engine)
        assert row_attempts == attempt
        # Full jitter: the wait lies in [0, ceiling(attempt)] (0.2, 0.4, 0.8, 0.8 ...).
        assert wait <= backoff_ceiling(attempt, base=0.2, maximum=0.8) + 0.05

    publisher.failing.clear()

    async def delivered() -> bool:
        await relay.run_once()
        return await count_rows(engine, "status = 'sent'") == 1

    await eventually(delivered, timeout=5.0, what="row sent once the fault is gone")
    assert await message_count(nc, cfg) == 1
    assert relay.publish_failures_total == 5


async def test_a_failing_record_stops_only_its_own_chain(
    engine: AsyncEngine, nc: Client, nats_server: NatsServer, unique: str
) -> None:
    cfg = relay_config(nats_server.url, unique, retry_base=5.0, retry_max=10.0)
    await provision_stream(nc, cfg)
    box = Outbox(cfg)
    sessions = sessions_for(engine, box)
    async with sessions.begin() as session:
        bad, good = Widget(name="bad-1"), Widget(name="good-1")
        session.add_all([bad, good])
    for n in (2, 3):
        async with sessions.begin() as session:
            for w in (bad, good):
                merged = await session.merge(w)
                merged.name = f"{merged.name.split('-')[0]}-{n}"
    publisher = FailingFor(publisher_for(nc, cfg), {bad.id})
    relay = OutboxRelay(cfg, engine, publisher)  # type: ignore[arg-type]

    assert await relay.run_once() == 3  # all of good's rows
    # bad's chain stopped at its first row: one attempt, the later two released
    # without an attempt (and without waiting for a retry of their own).
    assert publisher.calls.count(bad.id) == 1
    rows = await _rows_of(engine, bad.id)
    assert [(r["status"], r["attempts"], r["lease_owner"]) for r in rows] == [
        ("pending", 1, None),
        ("pending", 0, None),
        ("pending", 0, None),
    ]
    # When the head's retry falls due (time moved forward for the record), the next
    # claim takes the whole chain, first row first -- not the head alone.
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE bridge_outbox SET next_attempt_at = next_attempt_at - interval '1 hour'"
                " WHERE resource_id = :rid"
            ),
            {"rid": str(bad.id)},
        )
    claimed = [r.id for r in await relay.claim()]
    assert claimed == [r["id"] for r in rows]


async def test_retention_purges_old_sent_rows(
    engine: AsyncEngine, nc: Client, nats_server: NatsServer, unique: str
) -> None:
    cfg = relay_config(nats_server.url, unique, retention=0.3, cleanup_interval=0.2)
    await provision_stream(nc, cfg)
    box = Outbox(cfg)
    async with sessions_for(engine, box).begin() as session:
        session.add_all([Widget(name=f"w{i}") for i in range(7)])
    relay = OutboxRelay(cfg, engine, publisher_for(nc, cfg), outbox=box)
    assert await relay.run_once() == 7
    assert await relay.purge_sent(3600.0) == 0  # too young
    async with sessions_for(engine, box).begin() as session:
        session.add(Widget(name="still pending"))

    await relay.start()  # publishes the 8th row; the cleanup task purges sent rows
    try:

        async def purged() -> bool:
            return await count_rows(engine) == 0

        await eventually(purged, timeout=10.0, what="sent rows purged by retention")
    finally:
        await relay.stop(5.0)
    assert await message_count(nc, cfg) == 8  # purging the table never touches the stream


async def _retry_state(engine: AsyncEngine) -> tuple[int, float]:
    attempts = await scalar(engine, "SELECT attempts FROM bridge_outbox")
    wait = await scalar(
        engine, "SELECT extract(epoch FROM next_attempt_at - now()) FROM bridge_outbox"
    )
    return int(attempts), float(wait)


async def _rows_of(engine: AsyncEngine, resource_id: str) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        result = await conn.execute(
            text(
                "SELECT id, status, attempts, lease_owner FROM bridge_outbox "
                "WHERE resource_id = :r ORDER BY id"
            ),
            {"r": resource_id},
        )
        return [dict(r) for r in result.mappings()]
