"""The generator's SQL: the state sequence, ``bridge_next_id()`` and its companions.

One tuple of idempotent statements, :data:`ID_GENERATOR_DDL`, used by the Alembic
migration (``0010_bridge_ids``), by :func:`bridge.ids.generator.install` and by
``bridge.schema``'s ``create_all`` (after the settings table is created) — so every
path installs the same functions.

Contract of ``bridge_next_id()`` (usable as a column default, e.g.
``server_default=text("bridge_next_id()")``):

- the next tick is ``max(last tick + 1, the clock's tick)``; the state is the
  sequence ``bridge_id_tick``, which is not transactional: an id handed out by a
  transaction that rolls back is never issued again;
- read-modify-write of the state happens under a *session* advisory lock held only
  for the few microseconds of the computation (a transaction-scoped lock would make
  every inserting transaction wait for the others to commit); the lock is released on
  every path, a cancelled statement included;
- refusals raise with a SQLSTATE of class ``BR`` (:data:`SQLSTATES`), never re-issue
  an id: settings row missing, system number unset or outside 0..63, the clock more
  than ``max_lead_ms`` behind the last issued id, the scheme's last millisecond passed.

``bridge_id_advance_past(max_known_id)`` moves the state so that every id issued
afterwards is greater than ``max_known_id`` (the restore procedure); it refuses an id
more than ``max_lead_ms`` ahead of the clock, which would stop the generator.
``bridge_id_provenance(id)`` decodes an id in SQL (``issued_at``, ``sequence``,
``system``), the same arithmetic as :func:`bridge.ids.scheme.decode`.
"""

from __future__ import annotations

from bridge.ids.scheme import (
    EPOCH_UNIX_MS,
    MAX_ID,
    MAX_SYSTEM,
    MAX_TICK,
    SCHEME_MARKER,
    SEQUENCES_PER_MS,
    SYSTEMS,
)

#: The session advisory lock of the generator's state (one bigint key, ASCII "bridids1").
ID_LOCK_KEY = 0x62726964_69647331
_LOCK_CLASSID = ID_LOCK_KEY >> 32
_LOCK_OBJID = ID_LOCK_KEY & 0xFFFFFFFF

#: SQLSTATE → IdentityError.code.  Class "BR" is not used by PostgreSQL itself.
SQLSTATES: dict[str, str] = {
    "BRI01": "settings_missing",
    "BRI02": "system_unset",
    "BRI03": "system_out_of_range",
    "BRI04": "clock_behind",
    "BRI05": "exhausted",
    "BRI06": "out_of_range",
}

SEQUENCE_NAME = "bridge_id_tick"

# The clock's tick: milliseconds since the scheme's epoch, times the sequences per ms.
# clock_timestamp(), not now(): a long transaction must not issue stale ticks.
_NOW_TICK = (
    f"(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint - {EPOCH_UNIX_MS})"
    f" * {SEQUENCES_PER_MS}"
)

_RELEASE_IF_HELD = f"""
            IF EXISTS (SELECT 1 FROM pg_locks
                        WHERE locktype = 'advisory' AND pid = pg_backend_pid()
                          AND classid = {_LOCK_CLASSID} AND objid = {_LOCK_OBJID}
                          AND objsubid = 1 AND granted) THEN
                PERFORM pg_advisory_unlock({ID_LOCK_KEY});
            END IF;"""

_NEXT_ID = f"""
CREATE OR REPLACE FUNCTION bridge_next_id() RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $fn$
-- {SCHEME_MARKER}
DECLARE
    system_number integer;
    max_lead_ms integer;
    now_tick bigint;
    last_tick bigint;
    called boolean;
    tick bigint;
BEGIN
    SELECT s.system_number, s.max_lead_ms INTO system_number, max_lead_ms
      FROM bridge_id_settings AS s;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'bridge_next_id: bridge_id_settings has no row'
            USING ERRCODE = 'BRI01',
                  HINT = 'INSERT INTO bridge_id_settings (system_number) '
                         'VALUES (<0..{MAX_SYSTEM}>)';
    END IF;
    IF system_number IS NULL THEN
        RAISE EXCEPTION 'bridge_next_id: the system number of this database is not set'
            USING ERRCODE = 'BRI02',
                  HINT = 'UPDATE bridge_id_settings SET system_number = <0..{MAX_SYSTEM}>, '
                         'a number no other synced database uses';
    END IF;
    IF system_number NOT BETWEEN 0 AND {MAX_SYSTEM} THEN
        RAISE EXCEPTION 'bridge_next_id: system number % is outside 0..{MAX_SYSTEM}', system_number
            USING ERRCODE = 'BRI03';
    END IF;
    BEGIN
        PERFORM pg_advisory_lock({ID_LOCK_KEY});
        now_tick := {_NOW_TICK};
        SELECT q.last_value, q.is_called INTO last_tick, called FROM {SEQUENCE_NAME} AS q;
        IF NOT called THEN
            last_tick := last_tick - 1;
        END IF;
        IF greatest(last_tick + 1, now_tick) > {MAX_TICK} THEN
            RAISE EXCEPTION 'bridge_next_id: the id scheme ended at its last millisecond '
                            '(2094-09-07)'
                USING ERRCODE = 'BRI05';
        END IF;
        IF last_tick + 1 >= now_tick THEN
            -- Same millisecond, or ahead of the clock: take the next tick (a full
            -- millisecond borrows the next one), unless the clock is too far behind.
            IF last_tick + 1 - now_tick > max_lead_ms::bigint * {SEQUENCES_PER_MS} THEN
                RAISE EXCEPTION 'bridge_next_id: the clock is % ms behind the last issued id '
                                '(max_lead_ms = %)',
                                (last_tick + 1 - now_tick) / {SEQUENCES_PER_MS}, max_lead_ms
                    USING ERRCODE = 'BRI04',
                          HINT = 'the clock went backwards: fix it (NTP), or wait; '
                                 'ids are never issued twice';
            END IF;
            tick := nextval('{SEQUENCE_NAME}');
        ELSE
            tick := setval('{SEQUENCE_NAME}', now_tick);
        END IF;
    EXCEPTION WHEN OTHERS OR query_canceled THEN{_RELEASE_IF_HELD}
        RAISE;
    END;
    PERFORM pg_advisory_unlock({ID_LOCK_KEY});
    RETURN tick * {SYSTEMS} + system_number;
END
$fn$
"""

_ADVANCE_PAST = f"""
CREATE OR REPLACE FUNCTION bridge_id_advance_past(max_known_id bigint) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $fn$
-- {SCHEME_MARKER}
DECLARE
    max_lead_ms integer;
    target_tick bigint;
    now_tick bigint;
    last_tick bigint;
    called boolean;
BEGIN
    IF max_known_id IS NULL OR max_known_id NOT BETWEEN 0 AND {MAX_ID} THEN
        RAISE EXCEPTION 'bridge_id_advance_past: % is not an id (0..{MAX_ID})', max_known_id
            USING ERRCODE = 'BRI06';
    END IF;
    SELECT s.max_lead_ms INTO max_lead_ms FROM bridge_id_settings AS s;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'bridge_id_advance_past: bridge_id_settings has no row'
            USING ERRCODE = 'BRI01';
    END IF;
    target_tick := max_known_id / {SYSTEMS};
    BEGIN
        PERFORM pg_advisory_lock({ID_LOCK_KEY});
        now_tick := {_NOW_TICK};
        IF target_tick - now_tick > max_lead_ms::bigint * {SEQUENCES_PER_MS} THEN
            RAISE EXCEPTION 'bridge_id_advance_past: id % is % ms ahead of this database''s clock '
                            '(max_lead_ms = %); the generator would stop',
                            max_known_id, (target_tick - now_tick) / {SEQUENCES_PER_MS}, max_lead_ms
                USING ERRCODE = 'BRI04',
                      HINT = 'check that the id is one of this scheme and the clocks agree';
        END IF;
        SELECT q.last_value, q.is_called INTO last_tick, called FROM {SEQUENCE_NAME} AS q;
        IF NOT called THEN
            last_tick := last_tick - 1;
        END IF;
        IF target_tick > last_tick THEN
            last_tick := setval('{SEQUENCE_NAME}', target_tick);
        END IF;
    EXCEPTION WHEN OTHERS OR query_canceled THEN{_RELEASE_IF_HELD}
        RAISE;
    END;
    PERFORM pg_advisory_unlock({ID_LOCK_KEY});
    RETURN last_tick;
END
$fn$
"""

_PROVENANCE = f"""
CREATE OR REPLACE FUNCTION bridge_id_provenance(id bigint,
    OUT issued_at timestamptz, OUT sequence integer, OUT system integer)
LANGUAGE plpgsql IMMUTABLE STRICT AS $fn$
-- {SCHEME_MARKER}
BEGIN
    IF id NOT BETWEEN 0 AND {MAX_ID} THEN
        RAISE EXCEPTION 'bridge_id_provenance: % is not an id (0..{MAX_ID})', id
            USING ERRCODE = 'BRI06';
    END IF;
    issued_at := to_timestamp(({EPOCH_UNIX_MS} + id / {SYSTEMS * SEQUENCES_PER_MS}) / 1000.0);
    sequence := ((id / {SYSTEMS}) % {SEQUENCES_PER_MS})::integer;
    system := (id % {SYSTEMS})::integer;
END
$fn$
"""

#: Installs (or replaces) the generator; idempotent.  Needs ``bridge_id_settings``.
ID_GENERATOR_DDL: tuple[str, ...] = (
    f"CREATE SEQUENCE IF NOT EXISTS {SEQUENCE_NAME} AS bigint "
    f"MINVALUE 0 MAXVALUE {MAX_TICK} START WITH 0 NO CYCLE",
    "INSERT INTO bridge_id_settings (singleton) VALUES (true) ON CONFLICT DO NOTHING",
    _NEXT_ID,
    _ADVANCE_PAST,
    _PROVENANCE,
)

#: Removes what ID_GENERATOR_DDL installed (not the settings table); refuses while a
#: column default still calls bridge_next_id() (PostgreSQL's dependency check).
ID_GENERATOR_DROP_DDL: tuple[str, ...] = (
    "DROP FUNCTION IF EXISTS bridge_id_provenance(bigint)",
    "DROP FUNCTION IF EXISTS bridge_id_advance_past(bigint)",
    "DROP FUNCTION IF EXISTS bridge_next_id()",
    f"DROP SEQUENCE IF EXISTS {SEQUENCE_NAME}",
)
