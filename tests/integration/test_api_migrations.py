"""Migrations: the migrated schema equals the metadata (domain + bridge tables), by both paths."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect, text
from sqlalchemy.ext.asyncio import create_async_engine

from bridge import schema as bridge_schema
from bridge.schema_check import check_schema
from services.shared import models
from services.shared.db import migrate
from services.shared.event_versions import event_schemas

ROOT = Path(__file__).resolve().parents[2]


def _diff(connection: Connection) -> list[Any]:
    # Both metadata at once, as migrations/env.py targets them: the comparison sees every table.
    context = MigrationContext.configure(connection)
    return list(compare_metadata(context, [models.metadata, bridge_schema.metadata]))  # type: ignore[arg-type]


async def _schema_diff(url: str) -> tuple[list[Any], dict[str, list[str]]]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(_diff)
            indexes = await conn.run_sync(
                lambda c: {
                    table: sorted(ix["name"] for ix in inspect(c).get_indexes(table))
                    for table in inspect(c).get_table_names()
                }
            )
    finally:
        await engine.dispose()
    return diff, indexes


async def test_migrated_schema_matches_metadata(database_url: str) -> None:
    await migrate(database_url)
    await migrate(database_url)  # idempotent: already at head
    diff, indexes = await _schema_diff(database_url)
    assert diff == []
    assert set(indexes) == {
        "alembic_version",
        "organizations",
        "users",
        "sync_conflicts",
        "sync_stale_events",
        "bridge_outbox",
        "bridge_inbox",
        "bridge_backfill_runs",
        "bridge_reconcile_runs",
        "bridge_console_audit",
        "bridge_sync_conflicts",
        "bridge_sync_stale_events",
        "bridge_capture_settings",
        "bridge_id_settings",
    }
    # The capture triggers of 0007 are the ones the services' bridge expects at start.
    engine = create_async_engine(database_url)
    try:
        await check_schema(engine, [models.Organization, models.User], event_schemas())
    finally:
        await engine.dispose()
    # The bridge's indexes exactly as bridge.schema declares them.
    for table in (bridge_schema.outbox, bridge_schema.inbox):
        assert {ix.name for ix in table.indexes} <= set(indexes[table.name])
    assert "uq_organizations_domain_live" in indexes["organizations"]
    assert "uq_users_email_live" in indexes["users"]

    # The comparison is not blind: a missing index is a difference.
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("DROP INDEX uq_users_email_live"))
    finally:
        await engine.dispose()
    diff, _ = await _schema_diff(database_url)
    assert [d[0] for d in diff] == ["add_index"]


async def test_alembic_command_line_reads_database_url(database_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": database_url}
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", "migrations/alembic.ini", "upgrade", "head"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    diff, _ = await _schema_diff(database_url)
    assert diff == []
