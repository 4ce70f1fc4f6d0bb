"""Primary keys of any type (:mod:`bridge.keys`) and reconciliation opt-in: a model that
opts in but lacks something fails at construction with one error naming it and what it
lacks; a model that does not opt in never does; ``bridge reconcile`` reports such a
model as configuration (exit 2) before connecting to anything."""

from __future__ import annotations

import io
import sys
import types
import uuid
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from typing import ClassVar

import pytest
from sqlalchemy import (
    BigInteger,
    DateTime,
    Integer,
    MetaData,
    Numeric,
    SmallInteger,
    String,
    Text,
)
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bridge import Bridge, BridgeConfig, ConfigError, Synced
from bridge.cli import EXIT_USAGE, main_async
from bridge.keys import MAX_TEXT_CHARS, PrimaryKey
from bridge.reconcile._digest import check_model
from bridge.reconcile.synced_models import reconciled_models


class Base(DeclarativeBase):
    metadata = MetaData()


class Versioned(Synced):
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    origin: Mapped[str] = mapped_column(String(64))


class Product(Versioned, Base):  # the model: a string SKU key
    __tablename__ = "products"
    __bridge_resource__: ClassVar[str] = "product"
    __bridge_reconcile__: ClassVar[bool] = True
    sku: Mapped[str] = mapped_column(Text, primary_key=True)


class Reading(Versioned, Base):
    __tablename__ = "readings"
    __bridge_resource__: ClassVar[str] = "reading"
    __bridge_reconcile__: ClassVar[bool] = True
    sensor: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    site: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)


class Priced(Base, Synced):  # a numeric key and no version columns, opted in
    __tablename__ = "priced"
    __bridge_resource__: ClassVar[str] = "priced"
    __bridge_reconcile__: ClassVar[bool] = True
    price: Mapped[Decimal] = mapped_column(Numeric(10, 2), primary_key=True)


class Unversioned(Base, Synced):  # not opted in: never checked
    __tablename__ = "unversioned"
    __bridge_resource__: ClassVar[str] = "unversioned"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)


def test_the_resource_id_rule_as_sql() -> None:
    assert PrimaryKey(Product.__table__).resource_id_sql("t") == '(t."sku")::text'  # type: ignore[arg-type]
    assert PrimaryKey(Reading.__table__).resource_id_sql('"r"') == (  # type: ignore[arg-type]
        'jsonb_build_array("r"."sensor", "r"."seq", "r"."site")::text'
    )


def test_keys_are_parsed_for_the_column_types() -> None:
    key = PrimaryKey(Reading.__table__)  # type: ignore[arg-type]
    site = "6B7E4C2A-0000-4000-8000-000000000001"
    assert key.parse([-32768, 2**31 - 1, site]) == (-32768, 2**31 - 1, site.lower())
    for bad in (
        [32768, 1, site],  # beyond smallint
        [1, 2**31, site],  # beyond integer
        [1, 1],  # arity
        [1, 1, site, 1],
        ["1", 1, site],
        [True, 1, site],
        [1, 1, "x" * 37],
        {"sensor": 1},
    ):
        with pytest.raises(ValueError):
            key.parse(bad)
    text_key = PrimaryKey(Product.__table__)  # type: ignore[arg-type]
    assert text_key.parse(
        [
            "",
        ]
    ) == ("",)
    assert text_key.parse(["😀 é"]) == ("😀 é",)
    for bad_text in (["a\x00"], ["\udc00"], ["x" * (MAX_TEXT_CHARS + 1)], [1]):
        with pytest.raises(ValueError):
            text_key.parse(bad_text)


def test_a_model_that_opts_in_without_what_it_needs_is_named_with_all_it_lacks() -> None:
    assert reconciled_models([Product, Reading, Unversioned]) == (Product, Reading)
    with pytest.raises(ConfigError) as error:
        reconciled_models([Product, Priced, Unversioned])
    message = str(error.value)
    assert message.startswith("Priced (table priced) opts in to reconciliation but lacks")
    assert "'price' (NUMERIC(10, 2)" in message
    assert "version column 'updated_at'" in message and "'origin'" in message
    assert "Product" not in message and "Unversioned" not in message
    check_model(Product)  # a text key is fine


def test_the_bridge_refuses_such_a_model_at_construction_and_ignores_others() -> None:
    config = BridgeConfig(app_name="a", destination_app="b")
    engine = create_async_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    with pytest.raises(ConfigError, match="Priced"):
        Bridge(config, engine=engine, synced_models=[Product, Priced])
    bridge = Bridge(config, engine=engine, synced_models=[Unversioned])  # not opted in
    assert bridge.reconciled_models == ()
    assert Bridge(config, engine=engine, synced_models=[Product]).reconciled_models == (Product,)


@pytest.fixture
def models_module() -> Iterator[str]:
    name = f"bridge_test_models_{uuid.uuid4().hex}"
    module = types.ModuleType(name)
    module.Product = Product  # type: ignore[attr-defined]
    module.Priced = Priced  # type: ignore[attr-defined]
    sys.modules[name] = module
    yield name
    del sys.modules[name]


async def test_bridge_reconcile_reports_the_model_as_configuration_before_connecting(
    models_module: str,
) -> None:
    env = {
        "APP_NAME": "system_a",
        "DESTINATION_APP": "system_b",
        # Nothing listens on either: the model is reported before any connection.
        "NATS_URLS": "nats://127.0.0.1:1",
        "DATABASE_URL": "postgresql+asyncpg://postgres@127.0.0.1:1/none",
    }
    out, err = io.StringIO(), io.StringIO()
    code = await main_async(["reconcile", "--models", models_module], env=env, out=out, err=err)
    assert code == EXIT_USAGE
    assert "configuration error" in err.getvalue() and "Priced" in err.getvalue()
    assert "unreachable" not in err.getvalue()
    # A module none of whose models opts in says how to opt in.
    del sys.modules[models_module].Priced
    del sys.modules[models_module].Product
    sys.modules[models_module].Unversioned = Unversioned  # type: ignore[attr-defined]
    err = io.StringIO()
    code = await main_async(["reconcile", "--models", models_module], env=env, out=out, err=err)
    assert code == EXIT_USAGE and "__bridge_reconcile__ = True" in err.getvalue()
