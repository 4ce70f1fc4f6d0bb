"""NATS down while 1,000 changes commit → all 1,000 arrive once NATS is back, none twice.

The outage here lasts about 2 s instead of the issue's 30 s.  The relay's behaviour
does not depend on the length:

- with a ``connected`` probe (how :class:`bridge.runtime.Bridge` wires it) the relay
  does not claim while NATS is down — rows simply stay pending with zero attempts,
  however long that is — and resumes on the first round after the reconnect;
- without a probe every round fails its publishes; each row's next attempt is
  ``backoff_delay(attempts)``, capped at ``relay.retry_max`` (0.5 s here), so a
  longer outage only adds attempts (bounded by ``max_attempts``, set high here)
  and the first round after the reconnect, at most ``retry_max`` later, publishes.

Duplicates are possible in the second case (nats-py buffers publishes made while
reconnecting and flushes them on reconnect, and the relay then retries the same
rows): the stream's duplicate window drops them by ``Nats-Msg-Id``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import nats
import pytest
from nats.aio.client import Client
from sqlalchemy.ext.asyncio import AsyncEngine

from bridge.outbox.capture import Outbox
from bridge.outbox.relay import OutboxRelay
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

CHANGES = 1000
OUTAGE = 2.0


@pytest.fixture
async def own_nats() -> AsyncIterator[NatsServer]:
    server = NatsServer().start()
    yield server
    server.cleanup()


@pytest.mark.parametrize("probe", [True, False], ids=["connected-probe", "no-probe"])
async def test_outage_while_committing_1000_changes(
    engine: AsyncEngine, own_nats: NatsServer, unique: str, probe: bool
) -> None:
    cfg = relay_config(
        own_nats.url, unique, publish_timeout=0.5, max_attempts=10_000, retry_max=0.5
    )
    client: Client = await nats.connect(
        own_nats.url, reconnect_time_wait=0.1, max_reconnect_attempts=-1
    )
    await provision_stream(client, cfg)
    box = Outbox(cfg)
    relay = OutboxRelay(
        cfg,
        engine,
        publisher_for(client, cfg),
        outbox=box,
        connected=(lambda: client.is_connected) if probe else None,
    )
    await relay.start()
    try:
        own_nats.stop()
        await eventually(_disconnected(client), timeout=10.0, what="client sees the outage")
        sessions = sessions_for(engine, box)
        for batch in range(10):
            async with sessions.begin() as session:
                session.add_all([Widget(name=f"w{batch}-{i}") for i in range(CHANGES // 10)])
        await asyncio.sleep(OUTAGE)  # the outage itself, with the relay running

        assert await count_rows(engine, "status = 'pending'") == CHANGES
        attempts = await scalar(engine, "SELECT coalesce(sum(attempts), 0) FROM bridge_outbox")
        if probe:
            assert attempts == 0 and relay.publish_failures_total == 0
        else:
            assert attempts > 0 and relay.publish_failures_total > 0

        own_nats.start()

        async def all_sent() -> bool:
            return await count_rows(engine, "status = 'sent'") == CHANGES

        await eventually(all_sent, timeout=60.0, what="1,000 rows sent after the outage")
    finally:
        await relay.stop(10.0)

    assert await message_count(client, cfg) == CHANGES
    bodies = await stream_bodies(client, cfg)
    assert len({b["event_id"] for b in bodies}) == CHANGES
    assert await count_rows(engine, "status = 'failed'") == 0
    await client.close()


def _disconnected(client: Client) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return not client.is_connected

    return check
