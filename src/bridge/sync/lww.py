"""The batch path of the services' sync handlers: a run of events of one resource at once.

The contract is :mod:`services.shared.handlers`' ("Batch versions"): :func:`apply_batch`
applies a run in a constant number of statements when every event applies, is the same
version or is stale, and raises for anything that needs the per-event rules' judgement
(:class:`Collision` for a natural-key holder), so the inbox re-runs each event alone.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any, cast

from sqlalchemy import Table, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from bridge.envelope import Envelope
from bridge.errors import Retry
from bridge.sync.versions import Verdict, Version, judge
from services.shared.models import StaleEvent
from services.shared.sync_rows import Spec, differs, log_repaired, log_stale, stale_row


class Collision(Retry):
    """A batch met a natural-key holder: the per-event rules decide (handlers' module doc)."""


async def apply_batch(
    session: AsyncSession,
    envelopes: Sequence[Envelope],
    spec: Spec,
    decoded: Sequence[dict[str, Any]],
) -> None:
    """The batch path of both resources (handlers' module doc); ``decoded[i]`` is
    ``envelopes[i]``'s (:meth:`~services.shared.handlers.SyncHandlers._decode`)."""
    table = cast("Table", spec.model.__table__)
    key = spec.natural_key
    ids = sorted({values["id"] for values in decoded})
    loaded = await session.execute(
        select(table)
        .where(table.c.id.in_(ids))
        .order_by(table.c.id)
        .with_for_update(key_share=True)
    )
    # each record as the events before the current one in this run left it
    current: dict[uuid.UUID, Mapping[Any, Any]] = {row["id"]: row for row in loaded.mappings()}
    known = set(current)  # locked until the commit
    writes: dict[uuid.UUID, dict[str, Any]] = {}  # final row of every record applied
    stale: dict[uuid.UUID, dict[str, Any]] = {}  # sync_stale_events rows by event id
    live: list[dict[str, Any]] = []  # applied live rows whose natural key must be free
    held: dict[Any, uuid.UUID] = {}  # natural key -> record written live earlier in the run
    # logged once the run is written (a run that raises is re-run event by event, which logs)
    repaired: list[Envelope] = []
    stale_logs: list[tuple[Envelope, uuid.UUID, Version, Version]] = []
    for envelope, values in zip(envelopes, decoded, strict=True):
        record_id = values["id"]
        local = current.get(record_id)
        incoming = Version(values["updated_at"], values["origin"])
        version = Version(local["updated_at"], local["origin"]) if local is not None else None
        verdict = judge(version, incoming)
        if verdict is Verdict.SAME:
            # as in _apply: only the version's origin may repair a divergent row
            if local is None or envelope.producer != incoming.origin or not differs(local, values):
                continue
            repaired.append(envelope)
        elif verdict is Verdict.STALE:
            assert local is not None and version is not None
            event_id = uuid.UUID(envelope.event_id)
            stale.setdefault(event_id, stale_row(envelope, event_id, incoming, version))
            stale_logs.append((envelope, record_id, incoming, version))
            continue
        if local is not None and held.get(local[key]) == record_id:
            del held[local[key]]  # this record no longer holds its earlier key
        if values["deleted_at"] is None:
            holder = held.get(values[key])
            if holder is not None and holder != record_id:
                raise Collision(f"{key} {values[key]!r} of {record_id} is held by {holder}")
            held[values[key]] = record_id
            live.append(values)
        current[record_id] = writes[record_id] = values
    if live:
        column = table.c[key]
        holders = await session.execute(
            select(table.c.id, column).where(
                column.in_({values[key] for values in live}), table.c.deleted_at.is_(None)
            )
        )
        by_key = {row[1]: row[0] for row in holders}
        for values in live:
            holder_id = by_key.get(values[key])
            if holder_id is not None and holder_id != values["id"]:
                raise Collision(f"{key} {values[key]!r} of {values['id']} is held by {holder_id}")
    if stale:
        stale_table = cast("Table", StaleEvent.__table__)
        await session.execute(
            pg_insert(stale_table).values(list(stale.values())).on_conflict_do_nothing()
        )
    locked = [values for record_id, values in writes.items() if record_id in known]
    new = [values for record_id, values in writes.items() if record_id not in known]
    if new:
        # No ON CONFLICT: a record another transaction inserted meanwhile was never
        # judged here, so its unique violation fails the call and the per-event
        # rules decide (as a per-event insert would fail).
        await session.execute(pg_insert(table).values(new))
    if locked:
        # Rows locked above: the conflict always hits the row that was judged.
        upsert = pg_insert(table).values(locked)
        await session.execute(
            upsert.on_conflict_do_update(
                index_elements=[table.c.id],
                set_={name: upsert.excluded[name] for name in locked[0] if name != "id"},
            )
        )
    for envelope in repaired:
        log_repaired(envelope)
    for args in stale_logs:
        log_stale(*args)
