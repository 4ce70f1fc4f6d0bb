"""The ``resource_id`` rule has two writers — SQL (capture, backfill, re-emits) and Python
(the applier's check of an incoming payload's key) — and they must agree byte for byte,
or every composite-keyed event would be rejected as forged."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import BigInteger, Column, MetaData, Table, Text, Uuid, text
from sqlalchemy.ext.asyncio import create_async_engine

from bridge.keys import PrimaryKey

_metadata = MetaData()
_items = Table(
    "rule_items",
    _metadata,
    Column("shop", Text, primary_key=True),
    Column("n", BigInteger, primary_key=True),
    Column("batch", Uuid, primary_key=True),
)

_KEYS: list[tuple[Any, ...]] = [
    ("sku-1", 42, uuid.UUID(int=1)),
    ("", -(2**63), uuid.UUID(int=2**128 - 1)),
    ('quote " and \\ backslash', 2**63 - 1, uuid.uuid4()),
    ("ünïcødé 😀 and a tab\tand a newline\n", 0, uuid.uuid4()),
    ("control \x01\x1f and DEL \x7f", 7, uuid.uuid4()),
]


@pytest.mark.parametrize("key", _KEYS)
async def test_python_and_sql_write_the_same_resource_id(database_url: str, key: Any) -> None:
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_metadata.create_all)
            await conn.execute(_items.insert().values(shop=key[0], n=key[1], batch=key[2]))
            pk = PrimaryKey(_items)
            from_sql = (
                await conn.execute(text(f"SELECT {pk.resource_id_sql('r')} FROM rule_items r"))
            ).scalar_one()
    finally:
        await engine.dispose()
    assert PrimaryKey.resource_id(key) == from_sql


def test_single_column_key_is_its_text() -> None:
    assert PrimaryKey.resource_id((42,)) == "42"
    assert PrimaryKey.resource_id(("sku-1",)) == "sku-1"
    assert PrimaryKey.resource_id((uuid.UUID(int=1),)) == "00000000-0000-0000-0000-000000000001"
