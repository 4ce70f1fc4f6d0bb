"""Sync handlers: apply the other side's changes, last-writer-wins, without echo.

Registered on a :class:`bridge.routing.router.Router` by :meth:`SyncHandlers.register`
(``organization`` and ``user``, every action).  Each handler runs inside the
inbox transaction with publishing suppressed, so applying a change never
re-publishes it; the bridge commits, then acks.

The library does the sync (:class:`bridge.sync.lww.LastWriterWins` over each model's
declarations — version ``updated_at``/``origin``, tombstone ``deleted_at``, natural
keys ``domain`` and ``email``): payload → columns (``invalid_payload`` dead letters),
a ``*.deleted`` event without ``deleted_at`` made a tombstone at ``occurred_at``,
versions from the future (``future_version``), stale events, same-version repairs,
natural-key holders and conflicts.  What is this domain's:

- names, e-mails and the other text columns are never empty (``invalid_payload``);
- a user whose organization has not arrived yet → :class:`~bridge.errors.Retry`
  (NAK with backoff), never a dead letter: the organization is on its way;
- the bookkeeping stays in the services' own tables (their console section, metrics
  and ``/sync_status`` read them): a stale event in ``sync_stale_events``, a conflict
  in ``sync_conflicts`` (both ids, the key, both rows), the latter in its own
  transaction because the handler's is rolled back when it rejects.

Per-event and batch handlers are one path: :meth:`SyncHandlers.organization` is
:meth:`SyncHandlers.organizations` with one envelope, so their outcomes are equal by
construction.  A batch call with anything that needs one event's judgement (an invalid
payload, a version from the future, a missing organization, a natural-key holder)
raises, and the inbox re-runs each event alone (:mod:`bridge.routing.router`).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from bridge import Envelope, LastWriterWins, Reject, Retry, Router, SyncedTable
from bridge.config import DEFAULT_MAX_CLOCK_SKEW, Clock
from bridge.envelope import utcnow
from bridge.routing.outcomes import REASON_INVALID_PAYLOAD
from bridge.sync.lww import Conflict, Stale
from bridge.sync.records import json_row
from services.shared.models import Organization, StaleEvent, SyncConflict, User

#: Text columns that are never empty, per model.
_TEXT = {
    Organization: ("name", "domain", "origin"),
    User: ("name", "email", "role", "origin"),
}


class SyncHandlers:
    """The two handlers of one app; ``engine`` records conflicts outside the inbox transaction.

    ``clock`` and ``max_clock_skew`` bound incoming versions: pass the bridge config's.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        app_name: str,
        *,
        clock: Clock = utcnow,
        max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW,
    ) -> None:
        self._engine = engine
        self.app_name = app_name
        self._lww = {
            model: LastWriterWins(
                SyncedTable(model),
                clock=clock,
                max_clock_skew=max_clock_skew,
                on_stale=_record_stale,
                on_conflict=self._record_conflict,
            )
            for model in (Organization, User)
        }

    def register(self, router: Router, *, batch: bool = True) -> None:
        """Register the batch handlers (``batch=False``: the per-event ones)."""
        if batch:
            router.on_batch("organization", self.organizations)
            router.on_batch("user", self.users)
        else:
            router.on_resource("organization", self.organization)
            router.on_resource("user", self.user)

    async def organization(self, session: AsyncSession, envelope: Envelope) -> None:
        await self.organizations(session, (envelope,))

    async def user(self, session: AsyncSession, envelope: Envelope) -> None:
        await self.users(session, (envelope,))

    async def organizations(self, session: AsyncSession, envelopes: Sequence[Envelope]) -> None:
        """Apply a run of organization events, all or raise (module doc)."""
        lww = self._lww[Organization]
        await lww.apply(session, envelopes, _decode(lww, envelopes))

    async def users(self, session: AsyncSession, envelopes: Sequence[Envelope]) -> None:
        """Apply a run of user events, all or raise (module doc)."""
        lww = self._lww[User]
        decoded = _decode(lww, envelopes)
        lww.bound_versions(envelopes, decoded)  # a version from the future, before a Retry
        wanted = {values["organization_id"] for values in decoded}
        known = set(
            await session.scalars(select(Organization.id).where(Organization.id.in_(wanted)))
        )
        if wanted - known:
            missing = ", ".join(sorted(str(org_id) for org_id in wanted - known))
            if len(decoded) == 1:
                user_id = decoded[0]["id"]
                raise Retry(f"organization {missing} of user {user_id} has not arrived yet")
            raise Retry(f"organizations {missing} of users in this batch have not arrived yet")
        await lww.apply(session, envelopes, decoded)

    async def _record_conflict(self, session: AsyncSession, conflict: Conflict) -> None:
        # Own transaction: the handler's transaction is rolled back when it rejects.
        (key,) = conflict.key
        envelope = conflict.envelope
        row = {
            "event_id": uuid.UUID(envelope.event_id),
            "resource_type": envelope.resource_type,
            "key_name": key,
            "key_value": str(conflict.values[key]),
            "local_id": conflict.holder["id"],
            "incoming_id": conflict.values["id"],
            "incoming_origin": envelope.producer,
            "local_values": json_row(conflict.holder),
            "incoming_values": dict(envelope.payload),
        }
        async with self._engine.begin() as conn:
            await conn.execute(pg_insert(SyncConflict).values(**row).on_conflict_do_nothing())


def _decode(lww: LastWriterWins, envelopes: Sequence[Envelope]) -> list[dict[str, Any]]:
    """The rows of ``envelopes`` (:meth:`SyncedTable.decode`) and this domain's rule."""
    rows = [lww.table.decode(envelope) for envelope in envelopes]
    for envelope, values in zip(envelopes, rows, strict=True):
        _require_text(envelope, values, _TEXT[lww.table.model])
    return rows


def _require_text(envelope: Envelope, values: Mapping[str, Any], names: Sequence[str]) -> None:
    for name in names:
        if not values[name]:
            raise Reject(
                f"{envelope.event_type} payload: {name} must be a non-empty string",
                reason=REASON_INVALID_PAYLOAD,
            )


async def _record_stale(session: AsyncSession, stale: Sequence[Stale]) -> None:
    rows = {
        each.envelope.event_id: {
            "event_id": uuid.UUID(each.envelope.event_id),
            "resource_type": each.envelope.resource_type,
            "resource_id": each.record_id,
            "incoming_updated_at": each.incoming["updated_at"],
            "incoming_origin": each.incoming["origin"],
            "local_updated_at": each.local["updated_at"],
            "local_origin": each.local["origin"],
        }
        for each in stale
    }
    await session.execute(
        pg_insert(StaleEvent).values(list(rows.values())).on_conflict_do_nothing()
    )
