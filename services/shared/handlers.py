"""Sync handlers: apply the other side's changes, last-writer-wins, without echo.

Registered on a :class:`bridge.routing.router.Router` by :meth:`SyncHandlers.register`
(``organization`` and ``user``, every action).  Each handler runs inside the
inbox transaction with publishing suppressed, so applying a change never
re-publishes it; the bridge commits, then acks.

Contract (the payload is the sender's full row snapshot):

- The payload is validated (:func:`services.shared.sync_rows.decode`); a payload
  that is not a row of this resource is rejected (dead letter ``invalid_payload``) —
  retrying would not fix it.
- Deletes are versions too (a tombstone with ``deleted_at``); a ``*.deleted`` event
  without ``deleted_at`` (another producer hard-deleted) becomes a tombstone at
  ``occurred_at``.
- A user whose organization has not arrived yet → :class:`~bridge.errors.Retry`
  (NAK with backoff), never a dead letter: the organization is on its way.
- Everything else is last-writer-wins, applied by the library's one applier
  (:class:`bridge.sync.lww.LastWriterWins`: versions from the future —
  ``future_version`` dead letters — stale events, same-version repairs, natural-key
  holders — ``domain`` and ``email`` — and conflicts), with this
  domain's bookkeeping: a stale event is recorded in ``sync_stale_events``
  (``/sync_status`` ``stale_events``), a conflict in ``sync_conflicts`` (both ids, the
  key, both rows), written in its own transaction because the handler's is rolled
  back when it rejects.

Per-event and batch handlers are one path: :meth:`SyncHandlers.organization` is
:meth:`SyncHandlers.organizations` with one envelope, so their outcomes are equal by
construction.  A batch call with anything that needs one event's judgement (an invalid
payload, a version from the future, a missing organization, a natural-key holder)
raises, and the inbox re-runs each event alone (:mod:`bridge.routing.router`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from bridge import Envelope, LastWriterWins, Retry, Router, SyncedTable
from bridge.config import DEFAULT_MAX_CLOCK_SKEW, Clock
from bridge.envelope import utcnow
from bridge.sync.lww import Conflict, Stale
from services.shared.models import Organization, StaleEvent, SyncConflict
from services.shared.sync_rows import ORGANIZATION, USER, decode, json_row, stale_row

log = logging.getLogger("bridge.services.sync")


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
            spec.model: LastWriterWins(
                SyncedTable(spec.model, natural_key=spec.natural_key),
                clock=clock,
                max_clock_skew=max_clock_skew,
                on_stale=self._record_stale,
                on_conflict=self._record_conflict,
            )
            for spec in (ORGANIZATION, USER)
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
        decoded = [decode(envelope, ORGANIZATION) for envelope in envelopes]
        await self._lww[ORGANIZATION.model].apply(session, envelopes, decoded)

    async def users(self, session: AsyncSession, envelopes: Sequence[Envelope]) -> None:
        """Apply a run of user events, all or raise (module doc)."""
        decoded = [decode(envelope, USER) for envelope in envelopes]
        lww = self._lww[USER.model]
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

    async def _record_conflict(self, conflict: Conflict) -> None:
        # Own transaction: the handler's transaction is rolled back when it rejects.
        key = conflict.table.natural_key
        assert key is not None
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

    @staticmethod
    async def _record_stale(session: AsyncSession, stale: Sequence[Stale]) -> None:
        rows = {
            uuid.UUID(each.envelope.event_id): stale_row(each.envelope, each.incoming, each.local)
            for each in stale
        }
        await session.execute(
            pg_insert(StaleEvent).values(list(rows.values())).on_conflict_do_nothing()
        )
