"""Capture in PostgreSQL: the DDL of a synced table's capture trigger.

Every write to a synced table — an ORM flush, an ORM-enabled or Core
``insert()``/``update()``/``delete()``, raw SQL, a ``psql`` session — fires the
table's row trigger ``bridge_capture`` (AFTER INSERT OR UPDATE OR DELETE, FOR EACH
ROW), which writes one outbox row holding the complete envelope body in the same
transaction: rollback → no row; a trigger error aborts the writing statement, so no
change commits without its event.

Per synced table ``t`` (names longer than PostgreSQL's 63 bytes are shortened with a
hash):

- ``bridge_emit_t(r t, change text) RETURNS integer`` builds the envelope of row ``r``
  and inserts it into ``bridge_outbox``.  The trigger calls it, and so does
  re-stating rows as they are (:meth:`bridge.outbox.capture.Outbox.emit_snapshots`:
  backfill, reconciliation), so the payload rule exists once, here.
- ``bridge_capture_t()`` is the row trigger's function: nothing when the
  transaction-local setting ``bridge.capture`` is ``off`` (applying a peer's change:
  no echo); INSERT → ``created``; DELETE → ``deleted``; UPDATE → ``updated`` unless
  the row is unchanged (``NEW::text = OLD::text``: an UPDATE that changes nothing
  writes nothing).  A row whose tombstone column (``__bridge_tombstone__``) is not
  null is a ``deleted`` event whatever the change.
- ``bridge_capture_truncate`` (BEFORE TRUNCATE, statement) refuses a TRUNCATE —
  it fires no row trigger, so it would change the table without events — unless
  ``bridge.capture`` is ``off``.

The envelope (docs/ARCHITECTURE.md, "The wire contract"): ``event_id``
(``gen_random_uuid()``), ``schema_version`` per action baked in at install time from
the app's :class:`~bridge.event_schemas.EventSchemas`, ``event_type``
``<resource>.<action>``, ``producer`` and ``origin`` (the transaction-local setting
``bridge.producer`` a bridge session sets, else the database's recorded producer in
``bridge_capture_settings``; neither → the statement fails naming the remedy),
``resource_type``, ``resource_id`` (:mod:`bridge.keys`), ``occurred_at``
(``clock_timestamp()`` in :func:`bridge.envelope.format_timestamp`'s form),
``trace_id`` (from the ``bridge.traceparent`` setting, else a new random one),
``causation_id`` null, and ``payload``: every mapped column under its attribute name,
converted as :func:`payload_value_sql` says.  Stored as :mod:`bridge.outbox.body`
says: ``event_id``, ``event_type``, ``resource_type`` and ``resource_id`` in the row's
columns, the rest in its ``body``.  Headers: ``traceparent`` when the setting holds
one (the relay adds ``Nats-Msg-Id``).  The subject is ``bridge.subject`` or the
recorded one.

The trigger carries a comment ``bridge capture: resource=... versions=... digest=...``
(:func:`capture_comment`); the start-up check (:mod:`bridge.schema_check`) compares it
with what this code would install now, so a trigger installed for other schema
versions or other columns is found before the app writes.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ARRAY,
    JSON,
    Column,
    Date,
    DateTime,
    Enum,
    Float,
    Interval,
    LargeBinary,
    Numeric,
    Table,
    Time,
    TypeDecorator,
    Uuid,
    inspect,
)
from sqlalchemy.orm import Mapper
from sqlalchemy.types import TypeEngine

from bridge.errors import ConfigError
from bridge.event_schemas import EventSchemas
from bridge.keys import PrimaryKey, key_columns, quote_ident

#: The row trigger's name on every synced table (trigger names are per table).
TRIGGER_NAME = "bridge_capture"
TRUNCATE_TRIGGER_NAME = "bridge_capture_truncate"
#: The table holding the database's recorded producer (bridge.schema.capture_settings).
SETTINGS_TABLE = "bridge_capture_settings"
ACTIONS = ("created", "updated", "deleted")
#: :func:`bridge.envelope.format_timestamp` in to_char's words.
TIMESTAMP_FORMAT = 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'
_FAR_FUTURE = "9999-12-31T23:59:59.999999Z"
_FAR_PAST = "0001-01-01T00:00:00.000000Z"
_MAX_IDENTIFIER = 63
# jsonb_build_object takes at most 100 arguments: 50 key/value pairs.
_PAIRS_PER_CALL = 50
_COMMENT = re.compile(
    r"resource=(?P<resource>\S+) versions=(?P<versions>\S+) digest=(?P<digest>\w+)"
)

#: The shared TRUNCATE guard (one function for every synced table).
TRUNCATE_GUARD_DDL = """
CREATE OR REPLACE FUNCTION bridge_refuse_truncate() RETURNS trigger
LANGUAGE plpgsql AS $bridge$
BEGIN
    IF current_setting('bridge.capture', true) = 'off' THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION USING
        MESSAGE = 'bridge capture: TRUNCATE of synced table ' || TG_TABLE_NAME
                  || ' would change it without events',
        HINT = 'delete the rows instead (each becomes a deleted event), or run '
               'SET LOCAL bridge.capture = ''off'' first if the peer must not know',
        ERRCODE = 'object_not_in_prerequisite_state';
END $bridge$
"""


@dataclass(frozen=True, slots=True)
class CaptureSpec:
    """What a synced table's trigger captures: built from the model by :meth:`of`."""

    table: Table
    resource: str
    #: (payload key, column) for every mapped column, in mapper order.
    fields: tuple[tuple[str, Column[Any]], ...]
    tombstone: Column[Any] | None
    #: schema_version per action (``created``/``updated``/``deleted``).
    versions: Mapping[str, int]

    @classmethod
    def of(cls, model: type[Any], schemas: EventSchemas | None = None) -> CaptureSpec:
        """The spec of a mapped :class:`~bridge.outbox.capture.Synced` model, its
        versions from ``schemas`` (1 for undeclared types).  ConfigError when the model
        is not a mapped table model, lacks ``__bridge_resource__`` or names a tombstone
        that is not one of its columns."""
        mapper = inspect(model, raiseerr=False)
        if not isinstance(mapper, Mapper) or not isinstance(mapper.local_table, Table):
            raise ConfigError(f"{model.__name__} is not a mapped table model")
        table = mapper.local_table
        resource = getattr(model, "__bridge_resource__", None)
        if not isinstance(resource, str) or not resource:
            raise ConfigError(
                f"synced model {model.__name__} has no __bridge_resource__ "
                "(the resource type of its events, e.g. 'product')"
            )
        fields: list[tuple[str, Column[Any]]] = []
        for attr in mapper.column_attrs:
            column = attr.columns[0]
            if isinstance(column, Column) and column.table is table:
                fields.append((attr.key, column))
        tombstone_name = getattr(model, "__bridge_tombstone__", None)
        tombstone: Column[Any] | None = None
        if tombstone_name is not None:
            tombstone = _column_of(mapper, table, str(tombstone_name))
            if tombstone is None:
                raise ConfigError(
                    f"synced model {model.__name__}: __bridge_tombstone__ = "
                    f"{tombstone_name!r} names no column of table {table.name!r}"
                )
        key_columns(table)
        schemas = schemas or EventSchemas()
        versions = {a: schemas.current_version(f"{resource}.{a}", resource) for a in ACTIONS}
        return cls(table, resource, tuple(fields), tombstone, versions)

    # -- names ----------------------------------------------------------------------
    @property
    def qualified_table(self) -> str:
        return qualified(self.table, self.table.name)

    @property
    def emit_function(self) -> str:
        return qualified(self.table, function_name("bridge_emit_", self.table.name))

    @property
    def trigger_function(self) -> str:
        return qualified(self.table, function_name("bridge_capture_", self.table.name))


def qualified(table: Table, name: str) -> str:
    """``name`` quoted, in ``table``'s schema when it has one."""
    return f"{quote_ident(table.schema)}.{quote_ident(name)}" if table.schema else quote_ident(name)


def function_name(prefix: str, table_name: str) -> str:
    """``prefix + table_name``, shortened with a hash to PostgreSQL's identifier limit."""
    name = prefix + table_name
    if len(name.encode()) <= _MAX_IDENTIFIER:
        return name
    digest = hashlib.sha256(table_name.encode()).hexdigest()[:10]
    room = _MAX_IDENTIFIER - len(prefix.encode()) - len(digest) - 1
    return f"{prefix}{table_name.encode()[:room].decode(errors='ignore')}_{digest}"


def _column_of(mapper: Mapper[Any], table: Table, name: str) -> Column[Any] | None:
    """The column an attribute key or a column name ``name`` designates."""
    if name in mapper.column_attrs:
        column = mapper.column_attrs[name].columns[0]
        if isinstance(column, Column) and column.table is table:
            return column
    found = table.columns.get(name)
    return found if isinstance(found, Column) else None


def payload_value_sql(type_: TypeEngine[Any], ref: str) -> str:
    """The ``jsonb`` SQL of a column value of SQLAlchemy type ``type_`` held in ``ref``.

    The same JSON values the consumers always read: UUID, Numeric (exact: a string),
    Time, Interval and Enum as text; DateTime as ISO 8601 UTC with microseconds and a
    ``Z`` (a naive timestamp is taken as UTC; ``±infinity`` as the year 9999's last
    microsecond and the year 1's first, what asyncpg reads); Date as ``YYYY-MM-DD``; bytes as hex;
    JSON/JSONB as is; arrays element by element; anything else ``to_jsonb``.
    """
    if isinstance(type_, TypeDecorator):
        return payload_value_sql(type_.impl_instance, ref)
    if isinstance(type_, ARRAY):
        item = payload_value_sql(type_.item_type, "x")
        if item == "to_jsonb(x)":
            return f"to_jsonb({ref})"
        return (
            f"CASE WHEN {ref} IS NULL THEN NULL ELSE coalesce((SELECT jsonb_agg({item} "
            f"ORDER BY n) FROM unnest({ref}) WITH ORDINALITY AS u(x, n)), '[]'::jsonb) END"
        )
    if isinstance(type_, Float):
        return f"to_jsonb({ref})"
    if isinstance(type_, Numeric | Uuid | Time | Interval | Enum):
        return f"to_jsonb(({ref})::text)"
    if isinstance(type_, DateTime):
        utc = f"({ref}) AT TIME ZONE 'UTC'" if type_.timezone else ref
        # ±infinity: what asyncpg reads them as (datetime.max / datetime.min)
        return (
            f"to_jsonb(CASE WHEN {ref} IS NULL THEN NULL "
            f"WHEN isfinite({ref}) THEN to_char({utc}, '{TIMESTAMP_FORMAT}') "
            f"WHEN {ref} > '2000-01-01' THEN '{_FAR_FUTURE}' ELSE '{_FAR_PAST}' END)"
        )
    if isinstance(type_, Date):
        return f"to_jsonb(to_char({ref}, 'YYYY-MM-DD'))"
    if isinstance(type_, LargeBinary):
        return f"to_jsonb(encode({ref}, 'hex'))"
    if isinstance(type_, JSON):
        return f"to_jsonb({ref})"
    return f"to_jsonb({ref})"


def _payload_sql(spec: CaptureSpec) -> str:
    pairs = [
        f"{_literal(key)}, {payload_value_sql(column.type, 'r.' + quote_ident(column.name))}"
        for key, column in spec.fields
    ]
    if not pairs:
        return "'{}'::jsonb"
    calls = [
        "jsonb_build_object(\n            "
        + ",\n            ".join(pairs[i : i + _PAIRS_PER_CALL])
        + ")"
        for i in range(0, len(pairs), _PAIRS_PER_CALL)
    ]
    return " || ".join(calls)


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _emit_ddl(spec: CaptureSpec) -> str:
    resource = _literal(spec.resource)
    tombstone = (
        f"IF r.{quote_ident(spec.tombstone.name)} IS NOT NULL THEN v_action := 'deleted'; END IF;"
        if spec.tombstone is not None
        else ""
    )
    versions = " ".join(f"WHEN {_literal(a)} THEN {int(spec.versions[a])}" for a in ACTIONS)
    table_name = _literal(spec.table.name)
    return f"""
CREATE OR REPLACE FUNCTION {spec.emit_function}(r {spec.qualified_table}, change text)
RETURNS integer LANGUAGE plpgsql AS $bridge$
DECLARE
    v_producer text := nullif(current_setting('bridge.producer', true), '');
    v_subject text := nullif(current_setting('bridge.subject', true), '');
    v_traceparent text := nullif(current_setting('bridge.traceparent', true), '');
    v_event_id uuid := gen_random_uuid();
    v_action text := change;
    v_trace_id text;
    v_event_type text;
    v_resource_id text := {PrimaryKey(spec.table).resource_id_sql("r")};
    v_headers jsonb;
BEGIN
    IF v_producer IS NULL OR v_subject IS NULL THEN
        SELECT s.producer, s.subject INTO v_producer, v_subject FROM {SETTINGS_TABLE} s;
        IF v_producer IS NULL THEN
            RAISE EXCEPTION USING
                MESSAGE = 'bridge capture: no producer recorded for a write to ' || {table_name}
                          || ' (bridge_capture_settings is empty)',
                HINT = 'start the bridge once (it records its app name), or call '
                       'bridge.migrations.record_producer in a migration',
                ERRCODE = 'object_not_in_prerequisite_state';
        END IF;
    END IF;
    {tombstone}
    v_event_type := {resource} || '.' || v_action;
    IF v_traceparent IS NOT NULL AND split_part(v_traceparent, '-', 2) <> '' THEN
        v_trace_id := split_part(v_traceparent, '-', 2);
        v_headers := jsonb_build_object('traceparent', v_traceparent);
    ELSE
        v_trace_id := replace(gen_random_uuid()::text, '-', '');
        v_headers := '{{}}'::jsonb;
    END IF;
    INSERT INTO bridge_outbox
        (event_id, subject, event_type, resource_type, resource_id, headers, body)
    VALUES (
        v_event_id, v_subject, v_event_type, {resource}, v_resource_id, v_headers,
        jsonb_build_object(
            'producer', v_producer,
            'payload', {_payload_sql(spec)},
            'occurred_at', to_char(clock_timestamp() AT TIME ZONE 'UTC', '{TIMESTAMP_FORMAT}'),
            'schema_version', CASE v_action {versions} ELSE 1 END,
            'trace_id', v_trace_id,
            'origin', v_producer,
            'causation_id', NULL));
    RETURN 1;
END $bridge$
"""


def _trigger_function_ddl(spec: CaptureSpec) -> str:
    emit = spec.emit_function
    return f"""
CREATE OR REPLACE FUNCTION {spec.trigger_function}() RETURNS trigger
LANGUAGE plpgsql AS $bridge$
BEGIN
    IF current_setting('bridge.capture', true) = 'off' THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        PERFORM {emit}(NEW, 'created');
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM {emit}(OLD, 'deleted');
    ELSIF NEW::text IS DISTINCT FROM OLD::text THEN
        PERFORM {emit}(NEW, 'updated');
    END IF;
    RETURN NULL;
END $bridge$
"""


def _definition(spec: CaptureSpec) -> tuple[str, ...]:
    table = spec.qualified_table
    return (
        _emit_ddl(spec),
        _trigger_function_ddl(spec),
        f"DROP TRIGGER IF EXISTS {TRIGGER_NAME} ON {table}",
        f"CREATE TRIGGER {TRIGGER_NAME} AFTER INSERT OR UPDATE OR DELETE ON {table} "
        f"FOR EACH ROW EXECUTE FUNCTION {spec.trigger_function}()",
        TRUNCATE_GUARD_DDL,
        f"DROP TRIGGER IF EXISTS {TRUNCATE_TRIGGER_NAME} ON {table}",
        f"CREATE TRIGGER {TRUNCATE_TRIGGER_NAME} BEFORE TRUNCATE ON {table} "
        "FOR EACH STATEMENT EXECUTE FUNCTION bridge_refuse_truncate()",
    )


def capture_comment(spec: CaptureSpec) -> str:
    """The comment the trigger carries: resource, versions and a digest of its DDL."""
    digest = hashlib.sha256("\n".join(_definition(spec)).encode()).hexdigest()[:16]
    versions = ",".join(f"{a}:{spec.versions[a]}" for a in ACTIONS)
    return f"bridge capture: resource={spec.resource} versions={versions} digest={digest}"


def parse_comment(comment: str | None) -> dict[str, str] | None:
    """``resource``, ``versions`` and ``digest`` of a trigger comment (None if not one)."""
    match = _COMMENT.search(comment or "")
    return match.groupdict() if match else None


def install_statements(spec: CaptureSpec) -> tuple[str, ...]:
    """The DDL installing (or replacing) ``spec``'s capture trigger (idempotent)."""
    comment = _literal(capture_comment(spec))
    return (
        *_definition(spec),
        f"COMMENT ON TRIGGER {TRIGGER_NAME} ON {spec.qualified_table} IS {comment}",
    )


def drop_statements(spec: CaptureSpec) -> tuple[str, ...]:
    """The DDL removing ``spec``'s capture trigger and functions (idempotent)."""
    table = spec.qualified_table
    return (
        f"DROP TRIGGER IF EXISTS {TRIGGER_NAME} ON {table}",
        f"DROP TRIGGER IF EXISTS {TRUNCATE_TRIGGER_NAME} ON {table}",
        f"DROP FUNCTION IF EXISTS {spec.trigger_function}()",
        f"DROP FUNCTION IF EXISTS {spec.emit_function}({table}, text)",
    )
