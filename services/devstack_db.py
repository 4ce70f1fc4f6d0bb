"""The databases of ``make up``: its own by default, never a foreign one.

Contract:

- **Own databases by default** (:func:`own_database`): ``jsb_system_a`` and
  ``jsb_system_b`` (:data:`DEFAULT_DATABASES`) on the PostgreSQL devstack found,
  created when missing.  One that already holds a table the services and the
  bridge do not define (:func:`our_tables`: their SQLAlchemy metadata plus
  ``alembic_version``), in any schema, or an Alembic version that is not one of
  ``migrations/``, is someone else's: devstack refuses it with a one-line
  :class:`DevstackError` saying what to do, and migrates
  nothing into it.
- **Given databases** (:func:`given_database`, ``DATABASE_URL_A`` /
  ``DATABASE_URL_B``) are the user's choice: used as they are, foreign tables and
  all, but :func:`given_database` returns those tables so devstack says so.  A
  database that does not exist or cannot be reached is a one-line error naming
  the variable (the password never appears).

Nothing here starts a server; :class:`bridge.testing.PostgresServer` is passed in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

import asyncpg
from alembic.script import ScriptDirectory

from bridge import schema as bridge_schema
from bridge.testing import PostgresServer, database_name, to_async_url, to_plain_url
from bridge.transport.connection import redact_url
from services.devstack_support import DevstackError
from services.shared import models
from services.shared.db import alembic_config

#: The databases devstack creates and uses when DATABASE_URL_A/_B are not given.
DEFAULT_DATABASES = {"system_a": "jsb_system_a", "system_b": "jsb_system_b"}
URL_VARIABLES = {"system_a": "DATABASE_URL_A", "system_b": "DATABASE_URL_B"}
ALEMBIC_TABLE = "alembic_version"
CONNECT_TIMEOUT = 10.0


_TABLES = """
    SELECT table_schema, table_name FROM information_schema.tables
    WHERE table_schema NOT IN ('pg_catalog', 'information_schema')
      AND table_schema NOT LIKE 'pg\\_%'
"""


@dataclass(frozen=True, slots=True)
class Contents:
    """What a database holds: its tables ``(schema, name)`` and its Alembic version."""

    tables: tuple[tuple[str, str], ...]
    revision: str | None


def our_tables() -> frozenset[str]:
    """Tables of the ``public`` schema that migrations/ creates."""
    names = set(models.metadata.tables) | set(bridge_schema.metadata.tables)
    return frozenset({*names, ALEMBIC_TABLE})


@cache
def known_revisions() -> frozenset[str]:
    """Every revision id in migrations/."""
    script = ScriptDirectory.from_config(alembic_config())
    return frozenset(rev.revision for rev in script.walk_revisions())


def foreign_tables(tables: Iterable[tuple[str, str]]) -> list[str]:
    """Tables that are not ours (``schema.name`` outside ``public``), sorted."""
    ours = our_tables()
    foreign = {
        name if schema == "public" else f"{schema}.{name}"
        for schema, name in tables
        if schema != "public" or name not in ours
    }
    return sorted(foreign)


async def contents(url: str) -> Contents:
    """Read the tables and the Alembic version of the database at ``url``."""
    conn = await asyncpg.connect(to_plain_url(url), timeout=CONNECT_TIMEOUT)
    try:
        rows = await conn.fetch(_TABLES)
        tables = tuple((row["table_schema"], row["table_name"]) for row in rows)
        revision = None
        if ("public", ALEMBIC_TABLE) in tables:
            revision = await conn.fetchval(f"SELECT max(version_num) FROM {ALEMBIC_TABLE}")
    finally:
        await conn.close()
    return Contents(tables, revision)


def _listed(names: list[str], limit: int = 5) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


async def own_database(server: PostgresServer, name: str) -> str:
    """Create ``name`` on ``server`` if missing; refuse it if it is not ours; return
    its ``postgresql+asyncpg://`` URL."""
    url = await server.create_database(name)
    found = await contents(url)
    foreign = foreign_tables(found.tables)
    where = f"database {name!r} on {redact_url(to_plain_url(server.admin_url))}"
    advice = (
        f"devstack never migrates into a database it did not make: drop it "
        f"(DROP DATABASE {name}) or set {' and '.join(URL_VARIABLES.values())} to databases "
        f"of your own"
    )
    if foreign:
        raise DevstackError(
            f"{where} holds tables that are not the services' or the bridge's "
            f"({_listed(foreign)}); {advice}"
        )
    if found.revision is not None and found.revision not in known_revisions():
        raise DevstackError(
            f"{where} holds Alembic version {found.revision!r} of another project; {advice}"
        )
    return url


async def given_database(url: str, *, variable: str) -> tuple[str, list[str]]:
    """Check the database ``variable`` names: it must exist and answer.  Returns its
    async URL and its foreign tables (used as given; the caller says so)."""
    shown = redact_url(to_plain_url(url))
    try:
        found = await contents(url)
    except asyncpg.InvalidCatalogNameError as exc:
        name = database_name(url)
        raise DevstackError(
            f"{variable}: database {name!r} does not exist on {shown}: create it "
            f"(createdb {name}) or unset DATABASE_URL_A and DATABASE_URL_B to let devstack "
            f"use its own {' and '.join(DEFAULT_DATABASES.values())}"
        ) from exc
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else ""
        raise DevstackError(
            f"{variable}: cannot connect to {shown}: {type(exc).__name__}: {reason}"
        ) from exc
    return to_async_url(url), foreign_tables(found.tables)
