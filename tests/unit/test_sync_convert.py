"""bridge.sync.convert: payload → column values by column type, and the hostile cases
(each a Reject("invalid_payload") naming the column, never a crash)."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Enum,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    SmallInteger,
    String,
    Text,
    Time,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bridge.envelope import Envelope
from bridge.errors import Reject
from bridge.sync.convert import RowCodec, to_json


class Status(enum.Enum):
    ACTIVE = "active"
    RETIRED = "retired"


class Base(DeclarativeBase):
    metadata = MetaData()


class Item(Base):
    __tablename__ = "items"

    sku: Mapped[str] = mapped_column(String(8), primary_key=True)
    price: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    ratio: Mapped[Decimal | None] = mapped_column(Numeric)
    weight: Mapped[float | None] = mapped_column(Float)
    count: Mapped[int | None] = mapped_column(Integer)
    small: Mapped[int | None] = mapped_column(SmallInteger)
    big: Mapped[int | None] = mapped_column(BigInteger)
    flag: Mapped[bool] = mapped_column(Boolean, default=False)
    note: Mapped[str | None] = mapped_column(Text)
    status: Mapped[Status] = mapped_column(Enum(Status))
    kind: Mapped[str | None] = mapped_column(Enum("a", "b", name="kind"))
    on: Mapped[date | None] = mapped_column(Date)
    at: Mapped[time | None] = mapped_column(Time)
    seen: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    local: Mapped[datetime | None] = mapped_column(DateTime(timezone=False))
    ref: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    ref_text: Mapped[str | None] = mapped_column(UUID(as_uuid=False))
    attributes: Mapped[Any] = mapped_column(JSONB, nullable=True)
    tags: Mapped[list[str] | None] = mapped_column(ARRAY(String(10)))
    prices: Mapped[list[Decimal] | None] = mapped_column(ARRAY(Numeric(6, 2)))
    blob: Mapped[bytes | None] = mapped_column(LargeBinary)


CODEC = RowCodec(Item)
BASE = {"sku": "A-1", "price": "19.99", "status": "ACTIVE"}


def decode(**changes: Any) -> dict[str, Any]:
    return CODEC.decode({**BASE, **changes}, what="item.updated")


def refused(**changes: Any) -> str:
    with pytest.raises(Reject) as exc:
        decode(**changes)
    assert exc.value.reason == "invalid_payload"
    return str(exc.value)


def test_every_type_arrives_as_its_column_value() -> None:
    ref = uuid.uuid4()
    values = decode(
        ratio="12345678901234567890.123456789",
        weight=1.5,
        count=-(2**31),
        small=2**15 - 1,
        big=2**63 - 1,
        flag=True,
        note="n",
        kind="b",
        on="2026-01-31",
        at="12:30:00.5",
        seen="2026-01-31T12:00:00.000001Z",
        local="2026-01-31T12:00:00.000001Z",
        ref=str(ref),
        ref_text=str(ref).upper(),
        attributes={"a": [1, {"b": None}], "c": "x"},
        tags=["x", None, "y"],
        prices=["1.10", 2],
        blob="\\x00ff",
    )
    assert values["price"] == Decimal("19.99") and isinstance(values["price"], Decimal)
    assert values["ratio"] == Decimal("12345678901234567890.123456789")
    assert values["status"] is Status.ACTIVE and values["kind"] == "b"
    assert (values["count"], values["small"], values["big"]) == (-(2**31), 2**15 - 1, 2**63 - 1)
    assert values["on"] == date(2026, 1, 31) and values["at"] == time(12, 30, 0, 500000)
    assert values["seen"] == datetime(2026, 1, 31, 12, 0, 0, 1, tzinfo=UTC)
    assert values["local"] == datetime(2026, 1, 31, 12, 0, 0, 1)  # naive UTC
    assert values["ref"] == ref and values["ref_text"] == str(ref)
    assert values["attributes"] == {"a": [1, {"b": None}], "c": "x"}
    assert values["tags"] == ["x", None, "y"]
    assert values["prices"] == [Decimal("1.10"), Decimal(2)]
    assert values["blob"] == b"\x00\xff"
    assert values["flag"] is True


def test_missing_nullable_is_null_default_is_used_extra_keys_are_ignored() -> None:
    values = decode(unknown_column="ignored")
    assert values["note"] is None and values["flag"] is False
    assert "unknown_column" not in values


def test_numeric_is_exact_from_a_json_number_of_the_wire() -> None:
    body = Envelope(
        event_type="item.updated", producer="a", resource_type="item", resource_id="A-1",
        payload={**BASE, "ratio": 0},
    ).to_bytes().replace(b'"ratio":0', b'"ratio":0.1000000000000000055511151231257827')  # fmt: skip
    payload = Envelope.from_bytes(body).payload
    values = CODEC.decode(payload, what="item.updated")
    assert values["ratio"] == Decimal("0.1000000000000000055511151231257827")
    assert decode(price=19.99)["price"] == Decimal("19.99")  # a float given in Python: its repr
    assert decode(price="19.990")["price"] == Decimal("19.99")  # a zero decimal is no rounding
    assert decode(ratio="1e3")["ratio"] == Decimal(1000)


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("price", "NaN"),
        ("price", "Infinity"),
        ("price", "-inf"),
        ("price", "19.999"),  # would be rounded
        ("price", "123456789.00"),  # more than 8 digits before the point
        ("ratio", "1e200000"),  # more than PostgreSQL stores
        ("ratio", "1e-20000"),
        ("price", True),
        ("price", "abc"),
        ("price", [1]),
        ("count", 2**31),
        ("count", 1.0),
        ("count", True),
        ("count", "1"),
        ("small", -(2**15) - 1),
        ("flag", "yes"),
        ("flag", 1),
        ("sku", "123456789"),  # longer than String(8)
        ("sku", 5),
        ("note", "nul\x00"),
        ("status", "active_or_not"),
        ("status", 1),
        ("kind", "c"),
        ("on", "2026-02-30"),
        ("on", "2026-01-31T00:00:00Z"),
        ("seen", "yesterday"),
        ("seen", 1767225600),
        ("seen", "infinity"),
        ("ref", "not-a-uuid"),
        ("ref", 5),
        ("tags", "x"),
        ("tags", ["x", 1]),
        ("tags", ["much too long a tag"]),
        ("prices", ["1.234"]),
        ("blob", "zz"),
        ("weight", "1.5"),
        ("price", None),  # not nullable
    ],
)
def test_a_wrong_value_is_refused_naming_its_column(column: str, value: Any) -> None:
    assert f"items.{column}" in refused(**{column: value})


def test_a_missing_column_that_is_not_nullable_is_refused() -> None:
    with pytest.raises(Reject) as exc:
        CODEC.decode({"sku": "A-1", "status": "ACTIVE"}, what="item.updated")
    assert "items.price" in str(exc.value) and "missing" in str(exc.value)


def test_a_far_future_timestamp_is_a_value_like_any_other() -> None:
    # bounding versions is the applier's rule (max_clock_skew), not the conversion's
    assert decode(seen="9999-12-31T23:59:59.999999Z")["seen"].year == 9999


def test_enum_by_value_too_and_to_json_round_trips() -> None:
    assert decode(status="retired")["status"] is Status.RETIRED
    ref = uuid.uuid4()
    row = {
        "price": Decimal("1.10"),
        "status": Status.RETIRED,
        "at": time(1, 2),
        "tags": [Decimal("1.5"), ref],
        "blob": b"\x01",
        "seen": datetime(2026, 1, 1, tzinfo=UTC),
    }
    assert to_json(row) == {
        "price": "1.10",
        "status": "RETIRED",
        "at": "01:02:00",
        "tags": ["1.5", str(ref)],
        "blob": "01",
        "seen": "2026-01-01T00:00:00.000000Z",
    }
