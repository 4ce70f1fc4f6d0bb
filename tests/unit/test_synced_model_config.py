"""Model mistakes fail when mappers configure, naming the model (not at the first write);
the trigger DDL's pure rules: keys, payload values, long names."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import pytest
from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, configure_mappers, mapped_column

from bridge.errors import ConfigError
from bridge.event_schemas import EventSchemas
from bridge.keys import PrimaryKey
from bridge.outbox.capture import Synced
from bridge.outbox.triggers import (
    CaptureSpec,
    capture_comment,
    function_name,
    install_statements,
    parse_comment,
    payload_value_sql,
)


@pytest.fixture
def registry_base() -> Iterator[type[DeclarativeBase]]:
    class Local(DeclarativeBase):
        metadata = MetaData()

    yield Local
    Local.registry.dispose()  # a broken model must not break other tests' mappers


def test_a_synced_model_without_resource_fails_at_mapper_configuration(
    registry_base: type[DeclarativeBase],
) -> None:
    class Nameless(Synced, registry_base):  # type: ignore[valid-type,misc]
        __tablename__ = "nameless"
        id: Mapped[int] = mapped_column(primary_key=True)

    with pytest.raises(ConfigError, match="Nameless has no __bridge_resource__"):
        configure_mappers()


def test_a_tombstone_naming_no_column_fails_at_mapper_configuration(
    registry_base: type[DeclarativeBase],
) -> None:
    class Ghost(Synced, registry_base):  # type: ignore[valid-type,misc]
        __tablename__ = "ghost"
        __bridge_resource__ = "ghost"
        __bridge_tombstone__ = "removed_at"
        id: Mapped[int] = mapped_column(primary_key=True)

    with pytest.raises(ConfigError, match="'removed_at' names no column of table 'ghost'"):
        configure_mappers()


def test_a_correct_model_configures_and_its_spec_follows_attribute_names(
    registry_base: type[DeclarativeBase],
) -> None:
    class Item(Synced, registry_base):  # type: ignore[valid-type,misc]
        __tablename__ = "items"
        __bridge_resource__ = "item"
        __bridge_tombstone__ = "gone"
        id: Mapped[int] = mapped_column(primary_key=True)
        gone: Mapped[datetime | None] = mapped_column("gone_at", DateTime(timezone=True))

    configure_mappers()
    spec = CaptureSpec.of(Item)
    assert [key for key, _ in spec.fields] == ["id", "gone"]
    assert spec.tombstone is not None and spec.tombstone.name == "gone_at"


def test_key_rule_in_sql_and_python() -> None:
    table = Table("t", MetaData(), Column("a", Integer, primary_key=True))
    assert PrimaryKey(table).resource_id_sql("NEW") == '(NEW."a")::text'
    pair = Table(
        "p",
        MetaData(),
        Column("a", Integer, primary_key=True),
        Column("b", String, primary_key=True),
    )
    assert PrimaryKey(pair).resource_id_sql("r") == 'jsonb_build_array(r."a", r."b")::text'
    assert PrimaryKey.resource_id([7, "x"]) == '[7, "x"]' and PrimaryKey.resource_id([7]) == "7"
    assert PrimaryKey.resource_id([True]) == "true"  # PostgreSQL's boolean text
    with pytest.raises(ConfigError, match="no primary key"):
        PrimaryKey(Table("n", MetaData(), Column("a", Integer))).resource_id_sql("NEW")


def test_payload_values_keep_precision_and_timestamp_form() -> None:
    assert payload_value_sql(Numeric(10, 2), "v") == "to_jsonb((v)::text)"
    assert "AT TIME ZONE 'UTC'" in payload_value_sql(DateTime(timezone=True), "v")
    assert "AT TIME ZONE" not in payload_value_sql(DateTime(), "v")  # naive: taken as UTC


def test_long_table_names_fit_postgres_identifiers() -> None:
    name = function_name("bridge_capture_", "x" * 80)
    assert len(name) <= 63 and name != function_name("bridge_capture_", "x" * 79 + "y")


def test_the_trigger_comment_carries_versions_and_changes_with_them(
    registry_base: type[DeclarativeBase],
) -> None:
    class Doc(Synced, registry_base):  # type: ignore[valid-type,misc]
        __tablename__ = "docs"
        __bridge_resource__ = "doc"
        id: Mapped[int] = mapped_column(primary_key=True)

    schemas = EventSchemas()
    schemas.version("doc", 1, dict)
    schemas.version("doc", 2, dict)
    schemas.upcaster("doc", 1, lambda payload, envelope: payload)
    v1, v2 = CaptureSpec.of(Doc), CaptureSpec.of(Doc, schemas)
    assert parse_comment(capture_comment(v2)) == {
        "resource": "doc",
        "versions": "created:2,updated:2,deleted:2",
        "digest": parse_comment(capture_comment(v2))["digest"],  # type: ignore[index]
    }
    assert capture_comment(v1) != capture_comment(v2)
    assert install_statements(v1) != install_statements(v2)
    assert all("%" not in statement for statement in install_statements(v2))
