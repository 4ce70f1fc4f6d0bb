"""The warehouse's handling of product events, fed by the library's test harness: no NATS,
the real database, the real router and inbox.  Exact values, versions from the past
and the future, and payloads that are not products (dead letters)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from bridge import Envelope
from bridge.testing import BridgeHarness
from inventory.app import Side, build_bridge
from inventory.models import Product, ProductStatus

ROW = {
    "sku": "TEA-7",
    "name": "Teapot",
    "price": "1234567890.05",  # beyond a double's exact digits
    "attributes": {"glaze": "blue", "sizes": [0.5, 1.0], "nested": {"a": {"b": [None, True]}}},
    "tags": ["kitchen", "ceramic"],
    "status": "ACTIVE",
    "created_at": "2026-01-01T00:00:00.000000Z",
    "updated_at": "2026-01-01T00:00:00.000001Z",
    "origin": "shop",
    "deleted_at": None,
}


SHOP = "shop"  # the harness's peer: the warehouse's config knows it by name


def event(action: str = "updated", **changes: Any) -> Envelope:
    payload = {**ROW, **changes}
    return Envelope(
        event_type=f"product.{action}", producer=SHOP, resource_type="product",
        resource_id=str(payload["sku"]), payload=payload,
    )  # fmt: skip


@pytest.fixture
def harness(pair: tuple[Side, Side]) -> BridgeHarness:
    warehouse = pair[1]
    config = warehouse.config.with_(app_name="warehouse", destination_app=SHOP)
    return BridgeHarness.of(build_bridge(config, warehouse.engine))


async def product(harness: BridgeHarness, sku: str = "TEA-7") -> Product | None:
    async with AsyncSession(harness.engine) as session:
        return await session.scalar(select(Product).where(Product.sku == sku))


async def test_an_event_is_applied_exactly_and_an_older_one_is_stale(
    harness: BridgeHarness,
) -> None:
    delivered = await harness.deliver(event("created"))
    assert delivered.outcome == "acked", delivered
    stored = await product(harness)
    assert stored is not None
    assert stored.price == Decimal("1234567890.05")
    assert stored.attributes == ROW["attributes"]
    assert (stored.tags, stored.status) == (["kitchen", "ceramic"], ProductStatus.ACTIVE)

    older = event(name="Old teapot", updated_at="2026-01-01T00:00:00.000000Z")
    assert (await harness.deliver(older)).outcome == "acked"
    assert (stored := await product(harness)) is not None and stored.name == "Teapot"
    async with harness.engine.connect() as conn:
        stale = (await conn.execute(text("SELECT * FROM bridge_sync_stale_events"))).mappings()
        assert [str(row["event_id"]) for row in stale] == [older.event_id]

    deleted = event("deleted", updated_at="2026-01-02T00:00:00.000000Z")  # no deleted_at sent
    assert (await harness.deliver(deleted)).outcome == "acked"
    assert (stored := await product(harness)) is not None and stored.deleted_at is not None


@pytest.mark.parametrize(
    "changes",
    [
        {"price": "NaN"},
        {"price": "19.999"},
        {"price": 1e300},
        {"status": "SOLD_OUT"},
        {"tags": "kitchen"},
        {"tags": [1, 2]},
        {"sku": "X" * 33},
        {"updated_at": "not a time"},
        {"name": None},
        {"created_at": 1767225600},
    ],
)
async def test_a_payload_that_is_not_a_product_is_a_dead_letter(
    harness: BridgeHarness, changes: dict[str, Any]
) -> None:
    envelope = event(**changes)
    delivered = await harness.deliver(envelope)
    assert (delivered.outcome, delivered.reason) == ("dead_lettered", "invalid_payload")
    [letter] = harness.dead_letters
    column = next(iter(changes))
    assert f"products.{column}" in str(letter.error)
    assert await product(harness, str(envelope.resource_id)) is None


async def test_a_version_from_the_future_is_a_dead_letter(harness: BridgeHarness) -> None:
    delivered = await harness.deliver(event(updated_at="2999-01-01T00:00:00.000000Z"))
    assert (delivered.outcome, delivered.reason) == ("dead_lettered", "future_version")
    assert await product(harness) is None


async def test_a_deeply_nested_payload_is_refused_before_the_handler(
    harness: BridgeHarness,
) -> None:
    body = event().to_bytes().replace(b'"glaze":"blue"', b'"glaze":' + b"[" * 200 + b"]" * 200)
    delivered = await harness.deliver(body)
    assert (delivered.outcome, delivered.reason) == ("dead_lettered", "malformed")
    assert await product(harness) is None
