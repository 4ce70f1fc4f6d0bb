"""The inventory service: a FastAPI application with its own bridge.

- :func:`build_bridge`: the bridge of one side — its router applies the peer's product
  events with the library's last-writer-wins applier (payloads converted by column
  type, stale events and conflicts reported in the bridge's tables);
- :func:`create_schema`: the bridge's tables and the application's, for a quick start
  and the tests (production: migrations that include ``bridge.schema.metadata``);
- :func:`create_app`: the API (``PUT``/``GET``/``DELETE /products/{sku}``) plus the
  library's ``/health``, ``/metrics`` and ``/sync_status``; the bridge starts and
  stops with the application (``bridge_lifespan``).

Every write goes through the bridge's session (``bridge.session_factory``), so it is
captured in the same transaction; a write makes a version greater than the stored
one (:func:`bridge.sync.versions.next_updated_at`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncEngine

from bridge import Bridge, BridgeConfig, LastWriterWins, Router, bridge_lifespan
from bridge.integrations.fastapi import BridgeDep, bridge_router
from bridge.schema import create_all
from bridge.sync.versions import FutureVersion, next_updated_at
from inventory.models import Base, Product, ProductStatus


@dataclass(frozen=True)
class Side:
    """One side of the pair: its bridge config and its database."""

    config: BridgeConfig
    engine: AsyncEngine


def build_bridge(config: BridgeConfig, engine: AsyncEngine) -> Bridge:
    """One side's bridge: the peer's ``product.*`` events, last writer wins."""
    router = Router()
    LastWriterWins.for_model(
        Product, clock=config.clock, max_clock_skew=config.max_clock_skew
    ).register(router)
    return Bridge(config, engine=engine, router=router)


async def create_schema(engine: AsyncEngine) -> None:
    """The bridge's tables, the application's, and the capture trigger on ``products``
    (a service with Alembic uses :mod:`bridge.migrations` in its migrations instead)."""
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    await create_all(engine, models=[Product])


class ProductIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    price: Decimal = Field(max_digits=12, decimal_places=2)
    attributes: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    status: ProductStatus = ProductStatus.DRAFT


def create_app(config: BridgeConfig, engine: AsyncEngine) -> FastAPI:
    """The service of ``config.app_name`` on ``engine`` (module doc)."""
    app = FastAPI(
        title=f"inventory ({config.app_name})",
        lifespan=bridge_lifespan(lambda _app: build_bridge(config, engine)),
    )
    app.include_router(bridge_router())

    @app.get("/products/{sku}")
    async def get_product(sku: str, bridge: BridgeDep) -> dict[str, Any]:
        async with bridge.session_factory() as session:
            product = await session.get(Product, sku)
        if product is None or product.deleted_at is not None:
            raise HTTPException(404, f"no product {sku}")
        return product.as_json()

    @app.put("/products/{sku}")
    async def put_product(sku: str, body: ProductIn, bridge: BridgeDep) -> dict[str, Any]:
        async with bridge.session_factory.begin() as session:
            product = await session.get(Product, sku, with_for_update=True)
            now = _version(bridge, product)
            if product is None:
                product = Product(sku=sku, created_at=now)
                session.add(product)
            for name, value in body.model_dump().items():
                setattr(product, name, value)
            product.updated_at, product.origin = now, bridge.config.app_name
            product.deleted_at = None
            await session.flush()
            return product.as_json()

    @app.delete("/products/{sku}", status_code=204)
    async def delete_product(sku: str, bridge: BridgeDep) -> None:
        async with bridge.session_factory.begin() as session:
            product = await session.get(Product, sku, with_for_update=True)
            if product is None or product.deleted_at is not None:
                raise HTTPException(404, f"no product {sku}")
            now = _version(bridge, product)
            product.updated_at, product.origin, product.deleted_at = (
                now, bridge.config.app_name, now
            )  # fmt: skip

    return app


def _version(bridge: Bridge, product: Product | None) -> datetime:
    """A version later than the stored one (409 if the stored one is from the future)."""
    try:
        return next_updated_at(
            product.updated_at if product is not None else None,
            bridge.config.clock(),
            max_clock_skew=bridge.config.max_clock_skew,
        )
    except FutureVersion as exc:
        raise HTTPException(409, f"product {product.sku if product else ''}: {exc}") from exc
