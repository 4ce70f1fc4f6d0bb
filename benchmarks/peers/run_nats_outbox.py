"""Runner for nats-outbox (``nats_outbox``), executed with the peers' virtualenv python.

Driven as its README and source say: rows written with ``outbox_transaction`` /
``publish_event`` (``Nats-Msg-Id`` = event id, set at write time), published by one
``PollingRelay`` (``SELECT ... FOR UPDATE SKIP LOCKED`` of ``batch_size`` rows, one
``js.publish`` awaited per row, the batch's status updates committed together; it
sleeps ``polling_interval`` only when a tick found nothing).  Settings from the spec:
``batch_size`` (default 100, at most 1000) and ``polling_interval`` (default 1.0 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import nats
import runner_common
from nats_outbox.core.models import create_tables
from nats_outbox.core.outbox import outbox_transaction
from nats_outbox.publishers.nats_publisher import NatsPublisher
from nats_outbox.relay.polling import PollingRelay
from nats_outbox.settings import OutboxSettings
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

CHUNK = 1000


async def run(spec: runner_common.Spec) -> dict[str, Any]:
    settings = OutboxSettings(database_url=spec["database_url"], **spec["settings"])
    engine = create_async_engine(settings.database_url, pool_size=spec["producers"] + 4)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    nc = await nats.connect(spec["nats_url"])
    try:
        await create_tables(engine)
        publisher = NatsPublisher(nc.jetstream())
        relay = PollingRelay(sessions, publisher, settings)
        subject = spec["subject"]

        async def commit(event_id: str, body: dict[str, Any]) -> None:
            async with sessions() as session, outbox_transaction(session) as tx:
                tx.publish_event(subject, body, event_id=uuid.UUID(event_id))

        events = spec["events"]
        if spec["mode"] == "drain":
            for start in range(0, len(events), CHUNK):
                async with sessions() as session, outbox_transaction(session) as tx:
                    for event_id, body in events[start : start + CHUNK]:
                        tx.publish_event(subject, body, event_id=uuid.UUID(event_id))
        started = time.monotonic()
        task = asyncio.create_task(relay.start())
        try:
            if spec["mode"] == "drain":
                result = {"elapsed": await runner_common.wait_stored(spec, len(events), started)}
            else:
                result = await runner_common.steady(spec, commit)
        finally:
            await relay.stop()
            try:
                await asyncio.wait_for(task, 30.0)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        return result
    finally:
        await nc.close()
        await engine.dispose()


if __name__ == "__main__":
    runner_common.main(run)
