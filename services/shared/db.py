"""Database plumbing: the async engine and programmatic migrations.

:func:`migrate` runs Alembic's ``upgrade head`` (``migrations/``) on a
connection it opens itself, inside the caller's event loop: ``migrations/env.py``
uses a connection handed over in ``config.attributes["connection"]`` when there
is one (this path), and opens its own async engine otherwise (the ``alembic``
command line).

:func:`configure_identities`: the start-up step that gives the database its id
system number (``ID_SYSTEM_NUMBER``) and verifies the generator before the API
takes a write.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bridge.errors import ConfigError, IdentityError
from bridge.ids import GeneratorState, set_system_number, verify

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


#: Seconds a statement of the API may wait: asyncpg has no limit of its own, so a request
#: on a connection that died without a FIN or an RST (a partition) would never return.
COMMAND_TIMEOUT = 60.0


def make_engine(url: str, *, pool_size: int = 10, capture: bool = True) -> AsyncEngine:
    """An asyncpg engine; ``pool_pre_ping`` so a restarted database is survived, and a
    per-statement ``command_timeout`` so a dead connection fails a request instead of
    hanging it.  ``capture=False``: the connections set ``bridge.capture = off`` for
    their whole session, so the tables' capture triggers write nothing (sync off)."""
    connect_args: dict[str, object] = {"command_timeout": COMMAND_TIMEOUT}
    if not capture:
        connect_args["server_settings"] = {"bridge.capture": "off"}
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        connect_args=connect_args,
    )


def alembic_config(url: str | None = None) -> Config:
    """Alembic config of ``migrations/`` (``url`` overrides ``DATABASE_URL``)."""
    config = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        # ConfigParser interpolation: a literal % in a password must be doubled.
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


async def migrate(url: str, revision: str = "head") -> None:
    """Upgrade the database at ``url`` to ``revision`` (idempotent)."""
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade, alembic_config(url), revision)
    finally:
        await engine.dispose()


def _upgrade(connection: Connection, config: Config, revision: str) -> None:
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def configure_identities(engine: AsyncEngine, system_number: int) -> GeneratorState:
    """Give the database ``system_number`` if it has none yet, then :func:`bridge.ids.verify`.

    Refuses with :class:`~bridge.errors.ConfigError` when the database already has
    another number: the service points at another system's database, or its
    ``ID_SYSTEM_NUMBER`` changed — either way ids could collide, so a person decides
    (docs/IDENTITIES.md).  A generator that is not installed (migrations not run) is
    :class:`~bridge.errors.IdentityError` ``not_installed``.
    """
    async with engine.begin() as conn:
        try:
            state = await verify(conn)
        except IdentityError as exc:
            if exc.code not in ("system_unset", "settings_missing"):
                raise
            await set_system_number(conn, system_number)
            return await verify(conn)
    if state.system_number != system_number:
        raise ConfigError(
            f"this database issues ids with system number {state.system_number}, but the "
            f"service is configured with ID_SYSTEM_NUMBER={system_number}: is DATABASE_URL "
            "another system's database?  Two databases with one number can issue the same "
            "id; if the change is intended and no other synced database uses the number, "
            "set it with UPDATE bridge_id_settings SET system_number = <n> (docs/IDENTITIES.md)"
        )
    return state
