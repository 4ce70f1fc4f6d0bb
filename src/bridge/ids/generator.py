"""Operating the generator from Python: install, configure, verify, advance, take ids.

Plain async functions over an :class:`~sqlalchemy.ext.asyncio.AsyncConnection`; each
runs in the caller's transaction (the caller commits).  Errors of the database
function (SQLSTATE class ``BR``) come back as :class:`~bridge.errors.IdentityError`
with the same ``code`` as the SQL refusal (:data:`bridge.ids.ddl.SQLSTATES`).

Ids themselves are taken by the database (``bridge_next_id()`` as a column default),
so ORM, Core, raw SQL and ``psql`` inserts all get one; :func:`next_id` is for the
rare caller that needs an id before it inserts.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from bridge import schema
from bridge.errors import IdentityError
from bridge.ids.ddl import ID_GENERATOR_DDL, SEQUENCE_NAME, SQLSTATES
from bridge.ids.scheme import (
    EPOCH_UNIX_MS,
    MAX_SYSTEM,
    SCHEME_MARKER,
    SEQUENCES_PER_MS,
    SYSTEMS,
    check_id,
    check_system,
)

_FUNCTIONS = ("bridge_next_id", "bridge_id_advance_past", "bridge_id_provenance")


@dataclass(frozen=True, slots=True)
class GeneratorState:
    """What :func:`verify` found: the configured ``system_number`` and ``max_lead_ms``;
    ``last_tick`` the generator's state (None before its first id); ``lead_ms`` how far
    that state is ahead of the database's clock (negative: behind, the usual case —
    the next id takes the clock's time)."""

    system_number: int
    max_lead_ms: int
    last_tick: int | None
    lead_ms: int | None

    @property
    def last_id(self) -> int | None:
        """Every id this database issues from now on is greater than this one: its last
        id, or what :func:`advance_past` moved the state to (None before the first)."""
        if self.last_tick is None:
            return None
        return self.last_tick * SYSTEMS + self.system_number


def identity_error(exc: BaseException) -> IdentityError | None:
    """The :class:`IdentityError` a database error stands for, or None when it is not a
    refusal of the generator (another SQLSTATE, or no database error at all)."""
    orig = getattr(exc, "orig", exc)
    candidates = (orig, getattr(orig, "__cause__", None))
    for candidate in candidates:
        state = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(state, str) and state in SQLSTATES:
            message = str(getattr(candidate, "message", None) or candidate).strip()
            return IdentityError(message, code=SQLSTATES[state])
    return None


@contextmanager
def _refusals_as_identity_errors() -> Iterator[None]:
    try:
        yield
    except DBAPIError as exc:
        mapped = identity_error(exc)
        if mapped is None:
            raise
        raise mapped from exc


async def install(conn: AsyncConnection) -> None:
    """Create ``bridge_id_settings`` (with its one row, system number unset) if missing
    and install or replace the generator's sequence and functions.  Idempotent; the
    Alembic migration ``0010_bridge_ids`` does the same for migrated databases."""

    def _create(sync: Connection) -> None:
        if sync.dialect.has_table(sync, schema.id_settings.name):
            for statement in ID_GENERATOR_DDL:
                sync.exec_driver_sql(statement)
        else:
            # after_create runs ID_GENERATOR_DDL (bridge.schema)
            schema.id_settings.create(sync)

    await conn.run_sync(_create)


async def set_system_number(conn: AsyncConnection, system: int) -> None:
    """Set this database's system number (0..63), unique among the synced databases.

    Changing it on a database that already issued ids is safe for the ids of this
    database (the two numbers' ids are disjoint) but the new number must not be one
    another database uses: two databases with one number can issue the same id.
    """
    check_system(system)
    await conn.execute(
        text(
            "INSERT INTO bridge_id_settings (singleton, system_number) VALUES (true, :n) "
            "ON CONFLICT (singleton) DO UPDATE SET system_number = :n, updated_at = now()"
        ),
        {"n": system},
    )


async def next_id(conn: AsyncConnection) -> int:
    """One id from ``bridge_next_id()`` (raises :class:`IdentityError` on a refusal)."""
    with _refusals_as_identity_errors():
        return int((await conn.execute(text("SELECT bridge_next_id()"))).scalar_one())


async def advance_past(conn: AsyncConnection, max_known_id: int) -> int:
    """Make every id this database issues from now on greater than ``max_known_id``;
    returns the generator's last tick afterwards.  Never moves the state back.

    The restore procedure (docs/IDENTITIES.md): after restoring a backup, call it with
    the greatest id the other systems hold before the database takes writes again.
    Refuses (``clock_behind``) an id more than ``max_lead_ms`` ahead of the clock — a
    forged or foreign id that would stop the generator — and ``out_of_range`` for a
    value that is not an id at all.
    """
    check_id(max_known_id)
    with _refusals_as_identity_errors():
        result = await conn.execute(
            text("SELECT bridge_id_advance_past(:id)"), {"id": max_known_id}
        )
        return int(result.scalar_one())


async def verify(conn: AsyncConnection) -> GeneratorState:
    """Check that the generator is installed with this scheme and configured; raise
    :class:`IdentityError` saying what is missing (``not_installed``,
    ``scheme_mismatch``, ``settings_missing``, ``system_unset``,
    ``system_out_of_range``).  Issues no id."""
    present = (
        await conn.execute(
            text(
                "SELECT to_regclass('bridge_id_settings') IS NOT NULL AS settings, "
                f"to_regclass('{SEQUENCE_NAME}') IS NOT NULL AS sequence"
            )
        )
    ).one()
    sources: dict[str, str] = dict(
        (
            await conn.execute(
                text(
                    "SELECT proname, prosrc FROM pg_proc "
                    "WHERE proname = ANY(:names) AND pg_function_is_visible(oid)"
                ),
                {"names": list(_FUNCTIONS)},
            )
        ).all()
    )
    missing = [name for name in _FUNCTIONS if name not in sources]
    if not present.settings or not present.sequence or missing:
        what = missing + [
            name
            for name, there in (
                ("bridge_id_settings", present.settings),
                (SEQUENCE_NAME, present.sequence),
            )
            if not there
        ]
        raise IdentityError(
            f"the id generator is not installed (missing: {', '.join(what)}); run the "
            "migrations or bridge.ids.install()",
            code="not_installed",
        )
    foreign = [name for name, source in sources.items() if SCHEME_MARKER not in source]
    if foreign:
        raise IdentityError(
            f"{', '.join(sorted(foreign))} were installed for another id scheme "
            f"(expected '{SCHEME_MARKER}'); reinstall with bridge.ids.install()",
            code="scheme_mismatch",
        )
    row = (
        await conn.execute(
            text(
                "SELECT s.system_number, s.max_lead_ms, q.last_value, q.is_called, "
                "(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) AS now_ms "
                f"FROM bridge_id_settings AS s, {SEQUENCE_NAME} AS q"
            )
        )
    ).one_or_none()
    if row is None:
        raise IdentityError(
            "bridge_id_settings has no row; set the system number (bridge.ids.set_system_number)",
            code="settings_missing",
        )
    if row.system_number is None:
        raise IdentityError(
            "the system number of this database is not set (bridge.ids.set_system_number)",
            code="system_unset",
        )
    if not 0 <= row.system_number <= MAX_SYSTEM:
        raise IdentityError(
            f"system number {row.system_number} is outside 0..{MAX_SYSTEM}",
            code="system_out_of_range",
        )
    last_tick = int(row.last_value) if row.is_called else None
    lead_ms = None
    if last_tick is not None:
        lead_ms = last_tick // SEQUENCES_PER_MS - (int(row.now_ms) - EPOCH_UNIX_MS)
    return GeneratorState(
        system_number=int(row.system_number),
        max_lead_ms=int(row.max_lead_ms),
        last_tick=last_tick,
        lead_ms=lead_ms,
    )
