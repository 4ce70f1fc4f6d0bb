"""Numeric identities that never collide: ids generated in PostgreSQL by
``bridge_next_id()``, time-ordered, with the issuing database's system number in
them, all below 2**53 so JSON keeps them exact (docs/IDENTITIES.md).

- :mod:`bridge.ids.scheme`: the layout — :func:`compose`, :func:`decode` into a
  :class:`Provenance` (time, sequence, system), the limits; :func:`parse_id`, the one
  rule for ids received from outside (JSON bodies, events, URLs);
- :mod:`bridge.ids.ddl`: the SQL (``bridge_next_id()``, ``bridge_id_advance_past()``,
  ``bridge_id_provenance()``), installed by the migration ``0010_bridge_ids``;
- :mod:`bridge.ids.generator`: :func:`install`, :func:`set_system_number`,
  :func:`verify`, :func:`advance_past`, :func:`next_id`.

A column takes its id from the database::

    Column("id", BigInteger, primary_key=True, server_default=text("bridge_next_id()"))
"""

from bridge.ids.ddl import SQLSTATES
from bridge.ids.generator import (
    GeneratorState,
    advance_past,
    identity_error,
    install,
    next_id,
    set_system_number,
    verify,
)
from bridge.ids.scheme import (
    EPOCH,
    LAST_TIME,
    MAX_ID,
    MAX_SYSTEM,
    SEQUENCES_PER_MS,
    Provenance,
    check_id,
    compose,
    decode,
    parse_id,
)

#: Every ``IdentityError.code``.
ERROR_CODES: frozenset[str] = frozenset({*SQLSTATES.values(), "not_installed", "scheme_mismatch"})

__all__ = [
    "EPOCH",
    "ERROR_CODES",
    "LAST_TIME",
    "MAX_ID",
    "MAX_SYSTEM",
    "SEQUENCES_PER_MS",
    "GeneratorState",
    "Provenance",
    "advance_past",
    "check_id",
    "compose",
    "decode",
    "identity_error",
    "install",
    "next_id",
    "parse_id",
    "set_system_number",
    "verify",
]
