"""The issue's first example as a user's app would run it: a FastAPI app with
``bridge_lifespan`` and nothing else about logging, whose handler has a bug.  Run by
``test_default_logging.py`` as a subprocess; prints the event id of the envelope it
published once the delivery is dead-lettered.

Environment: ``NATS_URL``, ``DATABASE_URL``, ``STREAM_NAME``, ``APP`` and ``PEER``.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from bridge import Bridge, Envelope, Router, bridge_lifespan, configure_bidirectional
from bridge.schema import create_all
from bridge.transport.connection import Connection
from bridge.transport.publisher import Publisher


def parse_price(payload: dict[str, Any]) -> float:
    return float(payload["price"]) / payload["quantity"]  # the bug: quantity 0


async def apply_product(session: AsyncSession, envelope: Envelope) -> None:
    parse_price(envelope.payload)


async def main() -> None:
    engine = create_async_engine(os.environ["DATABASE_URL"])
    await create_all(engine)
    config = configure_bidirectional(
        os.environ["APP"], os.environ["PEER"], nats_urls=os.environ["NATS_URL"],
        stream_name=os.environ["STREAM_NAME"], max_deliver=3, backoff=(0.1, 0.1, 0.1),
    )  # fmt: skip
    router = Router()
    router.on_resource("product", apply_product)
    bridge = Bridge(config, engine=engine, router=router)
    app = FastAPI(lifespan=bridge_lifespan(lambda _app: bridge))
    async with app.router.lifespan_context(app):
        peer = config.with_(app_name=config.destination_app, destination_app=config.app_name)
        connection = Connection(peer)
        await connection.start(timeout=10)
        envelope = Envelope(
            event_type="product.updated", producer=peer.app_name, resource_type="product",
            resource_id="sku-1", payload={"price": "19.99", "quantity": 0},
        )  # fmt: skip
        await Publisher(connection.js, stream=peer.stream_name).publish(
            peer.subjects.publish, envelope
        )
        await connection.stop(timeout=5)
        deadline = time.monotonic() + 30
        while True:
            async with engine.connect() as conn:
                status = await conn.scalar(
                    text("SELECT status FROM bridge_inbox WHERE event_id = :id"),
                    {"id": envelope.event_id},
                )
            if status == "dead_lettered":
                break
            assert time.monotonic() < deadline, f"not dead-lettered: {status}"
            await asyncio.sleep(0.1)
    await engine.dispose()
    print(envelope.event_id)


if __name__ == "__main__":
    asyncio.run(main())
