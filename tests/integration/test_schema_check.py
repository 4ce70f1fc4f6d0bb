"""The start-up schema check and the Alembic operations of bridge.migrations.

A bridge refuses to start — one SchemaError naming everything missing and the fix —
on a database without its tables, without a synced table's capture trigger, or with
a trigger installed for other event versions; the operations an application's
migration runs make the same database pass.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import Connection, Integer, MetaData, String
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bridge import Bridge, migrations, schema
from bridge.config import BridgeConfig
from bridge.errors import SchemaError
from bridge.event_schemas import EventSchemas
from bridge.outbox.body import envelope_sql
from bridge.outbox.capture import Synced
from bridge.schema_check import check_schema, schema_problems


class Base(DeclarativeBase):
    metadata = MetaData()


class Note(Synced, Base):
    __tablename__ = "notes"
    __bridge_resource__ = "note"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    body: Mapped[str] = mapped_column(String(100))


def v2_schemas() -> EventSchemas:
    schemas = EventSchemas()
    schemas.version("note", 1, dict)
    schemas.version("note", 2, dict)
    schemas.upcaster("note", 1, lambda payload, envelope: payload)
    return schemas


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_async_engine(database_url)
    yield eng
    await eng.dispose()


async def test_start_on_an_empty_database_fails_naming_the_tables_and_the_fix(
    engine: AsyncEngine, unique: str
) -> None:
    config = BridgeConfig(app_name=f"a{unique}", destination_app=f"b{unique}")
    bridge = Bridge(config, engine=engine, synced_models=[Note])
    with pytest.raises(SchemaError) as raised:
        await bridge.start(timeout=5.0)
    message = str(raised.value)
    assert "missing bridge table(s)" in message and "bridge_outbox" in message
    assert "synced table notes does not exist" in message
    assert "bridge.migrations" in message and "create_all" in message
    assert not bridge.connection.is_connected  # refused before connecting


async def test_a_missing_trigger_and_a_trigger_for_other_versions_are_named(
    engine: AsyncEngine,
) -> None:
    await schema.create_all(engine)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    assert await schema_problems(engine, [Note]) == [
        "synced table notes has no capture trigger (bridge_capture)"
    ]
    await schema.create_all(engine, models=[Note])  # versions 1
    assert await schema_problems(engine, [Note]) == []
    with pytest.raises(
        SchemaError,
        match="stamps schema versions created:1,updated:1,deleted:1, "
        "this app publishes created:2,updated:2,deleted:2",
    ):
        await check_schema(engine, [Note], v2_schemas())
    async with engine.begin() as conn:
        await conn.exec_driver_sql("ALTER TABLE notes DISABLE TRIGGER bridge_capture")
    assert await schema_problems(engine, [Note]) == ["the capture trigger on notes is disabled"]


def _migrate(connection: Connection) -> None:
    op = Operations(MigrationContext.configure(connection))
    migrations.create_bridge_tables(op)
    Base.metadata.create_all(connection)
    migrations.install_capture(op, Note, v2_schemas())
    migrations.record_producer(op, "app", "app.sync.peer")


def _downgrade(connection: Connection) -> None:
    op = Operations(MigrationContext.configure(connection))
    migrations.drop_capture(op, Note)


async def test_the_alembic_operations_install_what_the_check_expects(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(_migrate)
    await check_schema(engine, [Note], v2_schemas())
    async with engine.begin() as conn:  # psql-style write: the recorded producer
        await conn.exec_driver_sql("INSERT INTO notes (id, body) VALUES (1, 'x')")
        body = (
            await conn.exec_driver_sql(f"SELECT {envelope_sql()} FROM bridge_outbox")
        ).scalar_one()
    assert (body["producer"], body["schema_version"], body["event_type"]) == (
        "app",
        2,
        "note.created",
    )
    async with engine.begin() as conn:
        await conn.run_sync(_downgrade)
    assert await schema_problems(engine, [Note]) == [
        "synced table notes has no capture trigger (bridge_capture)"
    ]
