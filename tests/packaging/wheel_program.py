"""A third party's program, run by the fresh virtualenv of ``test_wheel.py`` with only the
built wheel installed (and FastAPI + httpx): it must not import anything of this
repository but ``bridge``.

Two sides of a pair (``shop`` and ``warehouse``, two databases, one NATS server) sync a
``Product`` both ways through the installed library; the library's FastAPI router serves
``/health`` and ``/sync_status`` of a running side; the harness applies an envelope
without NATS.  Prints one ``ok ...`` line per step; any failure is a traceback and a
non-zero exit.

Environment: ``NATS_URL``, ``DATABASE_URL_A``, ``DATABASE_URL_B`` (``postgresql+asyncpg://``),
``STREAM_NAME``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable

import httpx
from fastapi import FastAPI
from sqlalchemy import String, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bridge import Bridge, Envelope, Router, Synced, bridge_lifespan, configure_bidirectional
from bridge.integrations.fastapi import bridge_router
from bridge.schema import create_all
from bridge.testing import BridgeHarness


class Base(DeclarativeBase):
    pass


class Product(Synced, Base):
    __tablename__ = "products"
    __bridge_resource__ = "product"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))


def product_router() -> Router:
    router = Router()

    async def apply(session: AsyncSession, envelope: Envelope) -> None:
        row = await session.get(Product, envelope.resource_id)
        if row is None:
            session.add(Product(id=envelope.resource_id, name=envelope.payload["name"]))
        else:
            row.name = envelope.payload["name"]

    router.on_resource("product", apply)
    return router


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + 30
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def name_in(engine: AsyncEngine, product_id: str) -> str | None:
    async with AsyncSession(engine) as session:
        return await session.scalar(select(Product.name).where(Product.id == product_id))


async def main() -> None:
    nats_url, stream = os.environ["NATS_URL"], os.environ["STREAM_NAME"]
    engines = [create_async_engine(os.environ[f"DATABASE_URL_{x}"]) for x in "AB"]
    for engine in engines:
        await create_all(engine, models=[Product])  # the tables and Product's capture trigger
    shop_engine, warehouse_engine = engines
    shop_config = configure_bidirectional(
        "shop", "warehouse", nats_urls=nats_url, stream_name=stream, backoff=(0.2, 0.5),
        max_deliver=3,
    )  # fmt: skip
    warehouse_config = shop_config.with_(app_name="warehouse", destination_app="shop")
    shop = Bridge(shop_config, engine=shop_engine, router=product_router())
    warehouse = Bridge(warehouse_config, engine=warehouse_engine, router=product_router())
    app = FastAPI(lifespan=bridge_lifespan(lambda _app: shop))
    app.include_router(bridge_router())
    async with app.router.lifespan_context(app), warehouse:
        created = str(uuid.uuid4())
        async with shop.session_factory.begin() as session:
            session.add(Product(id=created, name="kettle"))

        async def arrived() -> bool:
            return await name_in(warehouse_engine, created) == "kettle"

        await eventually(arrived, "shop's product at the warehouse")
        print("ok shop -> warehouse")
        async with warehouse.session_factory.begin() as session:
            row = await session.get(Product, created)
            assert row is not None
            row.name = "kettle (restocked)"

        async def returned() -> bool:
            return await name_in(shop_engine, created) == "kettle (restocked)"

        await eventually(returned, "warehouse's change at the shop")
        print("ok warehouse -> shop")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
            health = await client.get("/health")
            assert health.status_code == 200, health.text
            status = (await client.get("/sync_status")).json()
            assert status["outbox"]["sent"] >= 1, status
            assert (await client.get("/metrics")).status_code == 200
        print("ok router")
    harness = BridgeHarness(warehouse_config, warehouse_engine, product_router())
    envelope = Envelope(
        event_type="product.created", producer="shop", resource_type="product",
        resource_id=str(uuid.uuid4()), payload={"name": "teapot"},
    )  # fmt: skip
    delivered = await harness.deliver(envelope)
    assert delivered.outcome == "acked", delivered
    assert await name_in(warehouse_engine, envelope.resource_id) == "teapot"
    print("ok harness")
    for engine in engines:
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
