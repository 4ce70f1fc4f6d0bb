"""The start-up schema check: the database has what the bridge writes to.

:func:`check_schema` (run by :meth:`bridge.runtime.Bridge.start` before anything
connects) reads the catalog once and raises one :class:`~bridge.errors.SchemaError`
listing every problem and the fix:

- a table of :data:`bridge.schema.metadata` is missing (the bridge would fail at the
  first write with ``relation "bridge_outbox" does not exist``);
- the outbox has an earlier layout (no ``body`` column: :mod:`bridge.outbox.body`;
  :func:`bridge.migrations.upgrade_outbox_body` moves it);
- the outbox has no NOTIFY trigger (relays in other processes would only poll);
- a synced model's table has no enabled ``bridge_capture`` trigger, or one whose
  comment (:func:`bridge.outbox.triggers.capture_comment`) differs from what this
  code would install now: other schema versions (named in the message), other
  columns or another resource.

Only the models given are checked (``Bridge(synced_models=...)``): the bridge knows
no others.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bridge.errors import SchemaError
from bridge.event_schemas import EventSchemas
from bridge.outbox.triggers import TRIGGER_NAME, CaptureSpec, capture_comment, parse_comment
from bridge.schema import metadata

_MISSING_TABLES = text(
    "SELECT name FROM unnest(CAST(:names AS text[])) AS name WHERE to_regclass(name) IS NULL"
)
_NOTIFY_TRIGGER = text(
    "SELECT count(*) FROM pg_trigger WHERE tgname = 'bridge_outbox_notify' "
    "AND tgrelid = to_regclass('bridge_outbox')"
)
_OUTBOX_LAYOUT = text(
    "SELECT count(*) FROM pg_attribute WHERE attrelid = to_regclass('bridge_outbox') "
    "AND attname = 'body' AND NOT attisdropped"
)
_CAPTURE_TRIGGER = text(
    """
    SELECT to_regclass(:table) IS NOT NULL AS table_exists, t.tgenabled::text AS tgenabled,
           d.description
      FROM (SELECT 1) AS one
      LEFT JOIN pg_trigger t ON t.tgname = :trigger AND t.tgrelid = to_regclass(:table)
      LEFT JOIN pg_description d ON d.objoid = t.oid AND d.classoid = 'pg_trigger'::regclass
    """
)

#: What to run, named in every SchemaError.
REMEDY = (
    "create them in the application's Alembic migrations with bridge.migrations "
    "(create_bridge_tables(op); install_capture(op, Model, schemas) for each synced model, "
    "again whenever its columns or event versions change), or for tests and quick starts "
    "await bridge.schema.create_all(engine, models=[...], schemas=...)"
)


async def check_schema(
    engine: AsyncEngine, models: Sequence[type[Any]], schemas: EventSchemas | None = None
) -> None:
    """Raise :class:`~bridge.errors.SchemaError` naming everything missing (module doc)."""
    problems = await schema_problems(engine, models, schemas)
    if problems:
        raise SchemaError(
            f"the database is not ready for the bridge: {'; '.join(problems)}. Fix: {REMEDY}"
        )


async def schema_problems(
    engine: AsyncEngine, models: Sequence[type[Any]], schemas: EventSchemas | None = None
) -> list[str]:
    """The problems :func:`check_schema` reports, one sentence each (empty: ready)."""
    specs = [CaptureSpec.of(model, schemas) for model in models]
    problems: list[str] = []
    async with engine.connect() as conn:
        names = sorted(metadata.tables)
        missing = list((await conn.execute(_MISSING_TABLES, {"names": names})).scalars())
        if missing:
            problems.append(f"missing bridge table(s) {', '.join(missing)}")
        elif not (await conn.execute(_OUTBOX_LAYOUT)).scalar():
            problems.append(
                "bridge_outbox has an earlier layout (no column body): stop the relays and "
                "run bridge.migrations.upgrade_outbox_body(op) in a migration, then "
                "install_capture again for each synced model"
            )
        elif not (await conn.execute(_NOTIFY_TRIGGER)).scalar():
            problems.append("bridge_outbox has no NOTIFY trigger (bridge_outbox_notify)")
        for spec in specs:
            row = (
                await conn.execute(
                    _CAPTURE_TRIGGER, {"table": spec.qualified_table, "trigger": TRIGGER_NAME}
                )
            ).one()
            problem = _trigger_problem(spec, row.table_exists, row.tgenabled, row.description)
            if problem:
                problems.append(problem)
    return problems


def _trigger_problem(
    spec: CaptureSpec, table_exists: bool, enabled: str | None, comment: str | None
) -> str | None:
    table = spec.table.fullname
    if not table_exists:
        return f"synced table {table} does not exist"
    if enabled is None:
        return f"synced table {table} has no capture trigger ({TRIGGER_NAME})"
    if enabled == "D":
        return f"the capture trigger on {table} is disabled"
    expected = capture_comment(spec)
    if comment == expected:
        return None
    found, wanted = parse_comment(comment), parse_comment(expected)
    assert wanted is not None
    if found is None:
        return f"the capture trigger on {table} was not installed by this bridge"
    if found["resource"] != wanted["resource"]:
        return (
            f"the capture trigger on {table} publishes resource {found['resource']!r}, "
            f"the model says {wanted['resource']!r}"
        )
    if found["versions"] != wanted["versions"]:
        return (
            f"the capture trigger on {table} stamps schema versions {found['versions']}, "
            f"this app publishes {wanted['versions']}"
        )
    return (
        f"the capture trigger on {table} was installed for another definition of the "
        "model (its columns, types, key or tombstone changed since)"
    )
