"""The synced ``Product``: a string SKU key, an exact price, free-form JSONB attributes,
tags, a status enum and its version columns.

What makes it sync (read by the library, nothing else to write):

- ``Synced`` + ``__bridge_resource__``: every change made in a bridge session is
  captured into the outbox, the full row as the event's payload;
- ``__bridge_version__``: ``updated_at`` (the clock) then ``origin`` (the app that
  wrote the version, the tiebreak) — last writer wins;
- ``__bridge_tombstone__``: a delete is a soft delete, one more version, so a late
  older update cannot bring the product back; a tombstone's events are
  ``product.deleted``.

Capture is a PostgreSQL trigger on ``products`` (installed by
:func:`inventory.app.create_schema`): ORM, bulk, Core, raw SQL and psql writes are all
captured, in the writer's transaction.
"""

from __future__ import annotations

import enum
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar

from sqlalchemy import DateTime, Enum, Numeric, String
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bridge import Synced
from bridge.sync.convert import to_json


class Base(DeclarativeBase):
    """The application's own metadata (the bridge's tables are in ``bridge.schema``)."""


class ProductStatus(enum.Enum):
    DRAFT = "draft"
    ACTIVE = "active"
    DISCONTINUED = "discontinued"


class Product(Synced, Base):
    __tablename__ = "products"
    __bridge_resource__: ClassVar[str] = "product"
    __bridge_version__: ClassVar[tuple[str, str]] = ("updated_at", "origin")
    __bridge_tombstone__: ClassVar[str] = "deleted_at"

    sku: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    price: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    attributes: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    tags: Mapped[list[str]] = mapped_column(ARRAY(String(40)), default=list)
    status: Mapped[ProductStatus] = mapped_column(
        Enum(ProductStatus, name="product_status"), default=ProductStatus.DRAFT
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    origin: Mapped[str] = mapped_column(String(64))
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    def as_json(self) -> dict[str, Any]:
        """The product as the API shows it (the values as the event payload carries them)."""
        return {column.key: to_json(getattr(self, column.key)) for column in COLUMNS}


COLUMNS = tuple(Product.__table__.columns)
