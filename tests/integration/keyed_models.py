"""Synced models with every key type reconciliation supports — a bigint, text, a
composite (bigint, text) and a UUID key — for the any-key backfill and
reconciliation tests (their own metadata, not the services')."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import ClassVar

from sqlalchemy import BigInteger, DateTime, MetaData, String
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bridge import Synced


class Base(DeclarativeBase):
    metadata = MetaData()


class Versioned(Synced):
    name: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    origin: Mapped[str] = mapped_column(String(64))


class IntItem(Versioned, Base):
    __tablename__ = "int_items"
    __bridge_resource__: ClassVar[str] = "int_item"
    __bridge_reconcile__: ClassVar[bool] = True
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)


class TextItem(Versioned, Base):
    __tablename__ = "text_items"
    __bridge_resource__: ClassVar[str] = "text_item"
    __bridge_reconcile__: ClassVar[bool] = True
    sku: Mapped[str] = mapped_column(String(255), primary_key=True)


class LineItem(Versioned, Base):
    __tablename__ = "line_items"
    __bridge_resource__: ClassVar[str] = "line_item"
    __bridge_reconcile__: ClassVar[bool] = True
    order_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    line: Mapped[str] = mapped_column(String(64), primary_key=True)


class UuidItem(Versioned, Base):
    __tablename__ = "uuid_items"
    __bridge_resource__: ClassVar[str] = "uuid_item"
    __bridge_reconcile__: ClassVar[bool] = True
    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)


MODELS = (IntItem, TextItem, LineItem, UuidItem)

#: Per table: its key columns as SQL over generate_series' ``i`` (1..n), hitting the
#: type's boundaries — the least and greatest bigint, negatives, the empty string,
#: text whose byte order differs from most collations' ("Z" < "a" < "é" < "😀").
KEY_SQL = {
    "int_items": {
        "id": "CASE i WHEN 1 THEN -9223372036854775808 WHEN 2 THEN 9223372036854775807 "
        "ELSE i - :n / 2 END"
    },
    "text_items": {
        "sku": "CASE i WHEN 1 THEN '' WHEN 2 THEN 'Z' WHEN 3 THEN 'é' WHEN 4 THEN '😀' "
        "WHEN 5 THEN 'a b' ELSE 'sku-' || i END"
    },
    "line_items": {
        "order_id": "CASE i WHEN 1 THEN 9223372036854775807 ELSE i / 10 - :n / 20 END",
        "line": "CASE WHEN i % 10 = 0 THEN '' ELSE 'l' || (i % 10) || 'ü' END",
    },
    "uuid_items": {"id": "md5('item' || i)::uuid"},
}
#: The resource_id rule, written out independently of the library: a single key's
#: text, a composite key's jsonb array text.
RESOURCE_ID_SQL = {
    "int_items": "id::text",
    "text_items": "sku::text",
    "line_items": "jsonb_build_array(order_id, line)::text",
    "uuid_items": "id::text",
}


def seed_sql(table: str) -> str:
    """One INSERT ... SELECT of ``:n`` rows of ``table`` (params ``n``, ``origin``)."""
    keys = KEY_SQL[table]
    columns = ", ".join([*keys, "name", "updated_at", "origin"])
    values = ", ".join(
        [
            *keys.values(),
            "'item ' || i",
            "timestamptz '2026-02-01 00:00:00+00' + i * interval '1.000001 second'",
            ":origin",
        ]
    )
    return f"INSERT INTO {table} ({columns}) SELECT {values} FROM generate_series(1, :n) AS i"
