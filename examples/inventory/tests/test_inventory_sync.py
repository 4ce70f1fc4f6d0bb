"""Two inventory services, ``shop`` and ``warehouse``, over a real NATS server and two
real databases: products created, updated and deleted on either side reach the other
with every value exact, and concurrent updates converge on the last writer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from inventory.app import Side, create_app
from inventory.models import Product, ProductStatus

KETTLE = {
    "name": "Kettle",
    "price": "19.99",
    "attributes": {"volume_l": 1.7, "colours": ["red", "black"], "spec": {"watts": 2200}},
    "tags": ["kitchen", "electric"],
    "status": "active",
}


@asynccontextmanager
async def running(side: Side) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(side.config, side.engine)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://inventory") as client:
            yield client


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + 60
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def stored(engine: AsyncEngine, sku: str) -> Product | None:
    async with AsyncSession(engine) as session:
        return await session.scalar(select(Product).where(Product.sku == sku))


def same(engine: AsyncEngine, sku: str, want: Callable[[Product | None], bool]) -> Any:
    async def check() -> bool:
        return want(await stored(engine, sku))

    return check


async def test_create_update_delete_reach_the_peer_both_ways(pair: tuple[Side, Side]) -> None:
    shop, warehouse = pair
    async with running(shop) as at_shop, running(warehouse) as at_warehouse:
        created = await at_shop.put("/products/KET-001", json=KETTLE)
        assert created.status_code == 200, created.text
        await eventually(same(warehouse.engine, "KET-001", lambda p: p is not None), "create")
        product = await stored(warehouse.engine, "KET-001")
        assert product is not None
        assert product.price == Decimal("19.99") and isinstance(product.price, Decimal)
        assert product.attributes == KETTLE["attributes"]
        assert product.tags == ["kitchen", "electric"]
        assert product.status is ProductStatus.ACTIVE
        assert (product.origin, product.deleted_at) == (shop.config.app_name, None)
        assert (await at_warehouse.get("/products/KET-001")).json()["price"] == "19.99"

        restocked = {**KETTLE, "price": "17.50", "tags": ["kitchen"], "status": "discontinued"}
        assert (await at_warehouse.put("/products/KET-001", json=restocked)).status_code == 200
        await eventually(
            same(
                shop.engine, "KET-001", lambda p: p is not None and p.origin != shop.config.app_name
            ),
            "the warehouse's update at the shop",
        )
        product = await stored(shop.engine, "KET-001")
        assert product is not None
        assert (product.price, product.tags, product.status) == (
            Decimal("17.50"), ["kitchen"], ProductStatus.DISCONTINUED,
        )  # fmt: skip

        assert (await at_shop.delete("/products/KET-001")).status_code == 204
        await eventually(
            same(warehouse.engine, "KET-001", lambda p: p is not None and p.deleted_at is not None),
            "the shop's delete at the warehouse",
        )
        assert (await at_warehouse.get("/products/KET-001")).status_code == 404
        status = (await at_warehouse.get("/sync_status")).json()
        assert status["inbox"]["dead_lettered"] == 0, status


async def test_concurrent_updates_converge_on_the_last_writer(pair: tuple[Side, Side]) -> None:
    shop, warehouse = pair
    async with running(shop) as at_shop, running(warehouse) as at_warehouse:
        assert (await at_shop.put("/products/MUG-1", json=KETTLE)).status_code == 200
        await eventually(same(warehouse.engine, "MUG-1", lambda p: p is not None), "create")
        for round_ in range(3):
            await asyncio.gather(
                at_shop.put("/products/MUG-1", json={**KETTLE, "price": f"{round_}.01"}),
                at_warehouse.put("/products/MUG-1", json={**KETTLE, "price": f"{round_}.02"}),
            )

        async def converged() -> bool:
            a, b = await stored(shop.engine, "MUG-1"), await stored(warehouse.engine, "MUG-1")
            assert a is not None and b is not None
            return a.as_json() == b.as_json()

        await eventually(converged, "both sides holding one version")
        a = await stored(shop.engine, "MUG-1")
        assert a is not None
        # the last round's writes are the greatest versions: one of them won on both sides
        assert (a.origin, a.price) in {
            (shop.config.app_name, Decimal("2.01")), (warehouse.config.app_name, Decimal("2.02")),
        }  # fmt: skip
