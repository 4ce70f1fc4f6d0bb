"""Runner for faststream-outbox (``faststream_outbox``), executed with the peers' virtualenv.

Driven as its README's "outbox relay" quickstart: rows written with
``OutboxBroker.publish(body, queue=..., headers={"Nats-Msg-Id": event_id},
session=...)`` inside the caller's transaction; a subscriber on the queue, stacked
under a FastStream NATS JetStream publisher, relays each row (the handler returns the
body; ``propagate_inbound_headers=True`` carries ``Nats-Msg-Id`` onto the publish).
One fetch loop claims rows (``FOR UPDATE SKIP LOCKED`` + lease token, woken by
``LISTEN/NOTIFY``), ``max_workers`` workers each publish one row at a time (PubAck
awaited) and delete it (batched by ``terminal_flush_batch_size``).  Settings from the
spec: ``max_workers`` (default 1), ``fetch_batch_size`` (10), ``min_fetch_interval``
(1.0 s), ``max_fetch_interval`` (10 s), ``terminal_flush_batch_size`` (1); the
brokers' per-message logging is off (``logger=None``) in every run, as the other
contenders log nothing per message.
"""

from __future__ import annotations

import time
from typing import Any

import runner_common
from faststream.nats import JStream, NatsBroker
from faststream_outbox import OutboxBroker, make_outbox_table
from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

CHUNK = 1000
QUEUE = "bench"


async def run(spec: runner_common.Spec) -> dict[str, Any]:
    settings = dict(spec["settings"])
    metadata = MetaData()
    table = make_outbox_table(metadata, table_name="outbox")
    pool = settings.get("max_workers", 1) + spec["producers"] + 4
    engine = create_async_engine(spec["database_url"], pool_size=pool)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    outbox = OutboxBroker(engine, outbox_table=table, logger=None)
    broker = NatsBroker(spec["nats_url"], logger=None)
    to_nats = broker.publisher(spec["subject"], stream=JStream(spec["stream"], declare=False))

    @to_nats
    @outbox.subscriber(QUEUE, propagate_inbound_headers=True, **settings)
    async def relay(body: dict[str, Any]) -> dict[str, Any]:
        return body

    async def commit(event_id: str, body: dict[str, Any]) -> None:
        async with sessions() as session, session.begin():
            await outbox.publish(
                body, queue=QUEUE, headers={"Nats-Msg-Id": event_id}, session=session
            )

    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        events = spec["events"]
        if spec["mode"] == "drain":
            for start in range(0, len(events), CHUNK):
                async with sessions() as session, session.begin():
                    for event_id, body in events[start : start + CHUNK]:
                        await outbox.publish(
                            body, queue=QUEUE, headers={"Nats-Msg-Id": event_id}, session=session
                        )
        await broker.connect()
        started = time.monotonic()
        await outbox.start()
        try:
            if spec["mode"] == "drain":
                return {"elapsed": await runner_common.wait_stored(spec, len(events), started)}
            return await runner_common.steady(spec, commit)
        finally:
            await outbox.stop()
            await broker.stop()
    finally:
        await engine.dispose()


if __name__ == "__main__":
    runner_common.main(run)
