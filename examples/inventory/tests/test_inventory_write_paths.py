"""Every way of writing ``products`` on the shop reaches the warehouse — not only the ORM
flush: an ORM-enabled bulk ``update()``, a Core ``insert()``, a raw SQL ``UPDATE`` and a
statement from a plain database connection (what ``psql`` is), because capture is a
trigger in PostgreSQL, in the writer's transaction."""

from __future__ import annotations

from decimal import Decimal

import asyncpg
from sqlalchemy import insert, text, update
from test_inventory_sync import eventually, running, same

from inventory.app import Side
from inventory.models import Product, ProductStatus

_NOW = text("clock_timestamp()")


async def test_bulk_core_raw_sql_and_psql_writes_reach_the_peer(pair: tuple[Side, Side]) -> None:
    shop, warehouse = pair
    origin = shop.config.app_name
    # The shop's bridge, once started, has recorded its producer in the database: writes
    # from outside its sessions are published under the shop's name.
    async with running(shop) as at_shop, running(warehouse):

        # Core insert on a plain engine connection (no bridge session at all).
        async with shop.engine.begin() as conn:
            await conn.execute(  # one multi-row INSERT statement
                insert(Product.__table__).values([
                    {"sku": f"CORE-{n}", "name": f"core {n}", "price": Decimal("1.10"),
                     "attributes": {"n": n}, "tags": ["core"], "status": ProductStatus.ACTIVE,
                     "created_at": _NOW, "updated_at": _NOW, "origin": origin}
                    for n in range(3)
                ])
            )  # fmt: skip
        for n in range(3):
            await eventually(
                same(warehouse.engine, f"CORE-{n}", lambda p: p is not None and p.tags == ["core"]),
                f"Core insert CORE-{n}",
            )

        # ORM-enabled bulk update: one statement, three rows, no instance loaded.
        async with shop.engine.begin() as conn:
            await conn.execute(
                update(Product)
                .where(Product.sku.like("CORE-%"))
                .values(price=Decimal("2.25"), updated_at=_NOW)
            )
        for n in range(3):
            await eventually(
                same(
                    warehouse.engine, f"CORE-{n}",
                    lambda p: p is not None and p.price == Decimal("2.25"),
                ),
                f"bulk update of CORE-{n}",
            )  # fmt: skip

        # Raw SQL through SQLAlchemy's text().
        async with shop.engine.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE products SET name = 'renamed by SQL', updated_at = clock_timestamp() "
                    "WHERE sku = 'CORE-0'"
                )
            )
        await eventually(
            same(warehouse.engine, "CORE-0", lambda p: p is not None and p.name.startswith("ren")),
            "raw SQL update",
        )

        # A plain connection, as psql or another program would open it.
        url = shop.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        conn2 = await asyncpg.connect(url)
        try:
            await conn2.execute(
                "UPDATE products SET deleted_at = clock_timestamp(), "
                "updated_at = clock_timestamp() WHERE sku = 'CORE-1'"
            )
        finally:
            await conn2.close()
        await eventually(
            same(warehouse.engine, "CORE-1", lambda p: p is not None and p.deleted_at is not None),
            "psql-style soft delete",
        )
        status = (await at_shop.get("/sync_status")).json()
        assert status["outbox"]["failed"] == 0, status
