"""Sync handlers: apply the other side's changes, last-writer-wins, without echo.

Registered on a :class:`bridge.routing.router.Router` by :meth:`SyncHandlers.register`
(``organization`` and ``user``, every action).  Each handler runs inside the
inbox transaction with publishing suppressed, so applying a change never
re-publishes it; the bridge commits, then acks.

Contract, per event (the payload is the sender's full row snapshot):

- The payload is validated; a payload that is not a row of this resource is
  rejected (dead letter ``invalid_payload``) — retrying would not fix it.
- A payload ``updated_at`` later than this side's clock + ``max_clock_skew`` is a
  version from the future: dead letter ``future_version``, never applied
  (:func:`bridge.routing.version_time.check_version_time`; replayable once the clocks agree).
  Stored, it would win every comparison and could leave no room for a newer version.
- Versions are compared with :func:`services.shared.versioning.judge` under a row
  lock.  Newer → every column is stored verbatim, including the sender's
  ``updated_at`` and ``origin`` (never bumped).  The same version → nothing to do,
  except when the content differs and the event's producer is the version's
  origin: a reconciliation re-emit repairing a hand edit that did not bump the
  version (:mod:`bridge.reconcile.reconciler`) — the row is overwritten, with a warning.
  Older → **stale**: acked, recorded in ``sync_stale_events`` (``/sync_status``
  ``stale_events``), nothing changed.
- Deletes are versions too (a tombstone with ``deleted_at``); a ``*.deleted``
  event without ``deleted_at`` (another producer hard-deleted) becomes a tombstone
  at ``occurred_at``.  Unknown records are inserted, tombstones included, so a
  late, older create cannot resurrect a deleted record.
- A user whose organization has not arrived yet → :class:`~bridge.errors.Retry`
  (NAK with backoff), never a dead letter: the organization is on its way.
- Natural-key collision (the incoming live row's ``domain``/``email`` is held by a
  *different* live local row):

  * the local holder's version came from the sender → transient.  The sender
    enforces the same unique index, so it must already have moved that record
    away in a newer version that is still in flight (events of different records
    may arrive in any order): :class:`~bridge.errors.Retry`.
  * otherwise (the holder was written here) → a real conflict: a row in
    ``sync_conflicts`` (both ids, key, both rows) written in its own transaction
    (the handler's savepoint is rolled back), then
    ``Reject(..., reason="conflict")`` → dead letter.  Never silently dropped.
    Known limit: if the sender had seen our holder and then moved it away, and
    that move is still in flight, this is reported as a conflict too (the
    sender's snapshot does not say what it had seen); the dead letter can be
    replayed once the move arrived.

Batch versions (:meth:`SyncHandlers.organizations`, :meth:`SyncHandlers.users`,
registered by :meth:`SyncHandlers.register` with :meth:`bridge.routing.router.Router.on_batch`;
the statements are :func:`services.shared.sync_batch.apply_batch`, payload decoding is
:func:`services.shared.sync_rows.decode`) apply a run of events of one resource with the
same contract in a constant number of statements: decode all; for users ONE parent
query; lock and load every local row of the run in ONE ``SELECT ... FOR UPDATE`` (key
share, in id order so concurrent consumers lock in one order); judge each event in order
against the row as the events before it in the run left it; ONE natural-key query for
every incoming live key; ONE ``INSERT ... ON CONFLICT DO NOTHING`` for the stale events;
the final rows of the records applied in ONE ``INSERT ... ON CONFLICT (id) DO UPDATE``
for those found (and locked) and ONE plain ``INSERT`` for new ones (a record a
concurrent transaction inserted meanwhile then fails the call instead of being
overwritten unjudged, as a per-event insert would fail).

They take only the easy road.  Anything that needs the per-event rules'
judgement makes the call raise: an invalid payload, a version from the future, a
missing organization, ANY live natural-key holder other than the incoming record (in
the database before the run, or written earlier in the run).  The inbox then rolls the
attempt back and re-runs each event alone, and a call with one envelope IS the
per-event handler.  So outcomes (dead-letter reasons, conflicts, retries) are the
per-event ones by construction; the batch path only decides runs where every event
applies, is the same version, or is stale.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, cast

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from bridge.config import DEFAULT_MAX_CLOCK_SKEW, Clock
from bridge.envelope import Envelope, utcnow
from bridge.errors import Reject, Retry
from bridge.routing.router import Router
from bridge.routing.version_time import check_version_time
from bridge.sync.lww import apply_batch
from bridge.sync.versions import Verdict, Version, judge
from services.shared.models import Organization, StaleEvent, SyncConflict, User
from services.shared.sync_rows import (
    ORGANIZATION,
    USER,
    Spec,
    decode,
    differs,
    json_row,
    log_repaired,
    log_stale,
)

log = logging.getLogger("bridge.services.sync")

REASON_CONFLICT = "conflict"


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
        self._clock = clock
        self._max_clock_skew = max_clock_skew

    def register(self, router: Router, *, batch: bool = True) -> None:
        """Register the batch handlers (``batch=False``: the per-event ones)."""
        if batch:
            router.on_batch("organization", self.organizations)
            router.on_batch("user", self.users)
        else:
            router.on_resource("organization", self.organization)
            router.on_resource("user", self.user)

    async def organization(self, session: AsyncSession, envelope: Envelope) -> None:
        await self._apply(session, envelope, ORGANIZATION, self._decode(envelope, ORGANIZATION))

    async def user(self, session: AsyncSession, envelope: Envelope) -> None:
        values = self._decode(envelope, USER)
        org_id = values["organization_id"]
        known = await session.scalar(select(Organization.id).where(Organization.id == org_id))
        if known is None:
            raise Retry(f"organization {org_id} of user {values['id']} has not arrived yet")
        await self._apply(session, envelope, USER, values)

    async def organizations(self, session: AsyncSession, envelopes: Sequence[Envelope]) -> None:
        """Batch version of :meth:`organization` (module doc): all applied, or raise."""
        if len(envelopes) == 1:
            await self.organization(session, envelopes[0])
            return
        decoded = [self._decode(envelope, ORGANIZATION) for envelope in envelopes]
        await apply_batch(session, envelopes, ORGANIZATION, decoded)

    async def users(self, session: AsyncSession, envelopes: Sequence[Envelope]) -> None:
        """Batch version of :meth:`user` (module doc): all applied, or raise."""
        if len(envelopes) == 1:
            await self.user(session, envelopes[0])
            return
        decoded = [self._decode(envelope, USER) for envelope in envelopes]
        wanted = {values["organization_id"] for values in decoded}
        known = set(
            await session.scalars(select(Organization.id).where(Organization.id.in_(wanted)))
        )
        if wanted - known:
            missing = ", ".join(sorted(str(org_id) for org_id in wanted - known))
            raise Retry(f"organizations {missing} of users in this batch have not arrived yet")
        await apply_batch(session, envelopes, USER, decoded)

    def _decode(self, envelope: Envelope, spec: Spec) -> dict[str, Any]:
        """:func:`decode`, then the version bound: Reject ``future_version`` beyond it.

        In a batch call the Reject makes the call raise, so the inbox re-runs each
        delivery alone and this same check decides the one it concerns.
        """
        values = decode(envelope, spec)
        check_version_time(
            values["updated_at"],
            now=self._clock(),
            max_clock_skew=self._max_clock_skew,
            what=f"{envelope.event_type} payload updated_at",
        )
        return values

    async def _apply(
        self, session: AsyncSession, envelope: Envelope, spec: Spec, values: dict[str, Any]
    ) -> None:
        model = spec.model
        local = cast(
            "Organization | User | None",
            (
                await session.execute(
                    select(model)
                    .where(model.id == values["id"])
                    .with_for_update(key_share=True)
                    .execution_options(populate_existing=True)
                )
            ).scalar_one_or_none(),
        )
        incoming = Version(values["updated_at"], values["origin"])
        current = Version(local.updated_at, local.origin) if local is not None else None
        verdict = judge(current, incoming)
        if verdict is Verdict.SAME:
            # Only a reconciliation re-emit by the version's origin may fix a row edited
            # by hand without a version bump; any other same-version event is a no-op.
            if local is None or envelope.producer != incoming.origin or not differs(local, values):
                return
            log_repaired(envelope)
        elif verdict is Verdict.STALE:
            assert current is not None
            await self._record_stale(session, envelope, values["id"], incoming, current)
            return
        if values["deleted_at"] is None:
            await self._check_natural_key(session, envelope, spec, values)
        if local is None:
            session.add(model(**values))
        else:
            for name, value in values.items():
                setattr(local, name, value)
        await session.flush()

    async def _check_natural_key(
        self, session: AsyncSession, envelope: Envelope, spec: Spec, values: dict[str, Any]
    ) -> None:
        model, key = spec.model, spec.natural_key
        holder = cast(
            "Organization | User | None",
            (
                await session.execute(
                    select(model)
                    .where(
                        getattr(model, key) == values[key],
                        model.deleted_at.is_(None),
                        model.id != values["id"],
                    )
                    .limit(1)
                )
            ).scalar_one_or_none(),
        )
        if holder is None:
            return
        if holder.origin == envelope.producer:
            raise Retry(
                f"{key} {values[key]!r} is held here by {holder.id}, last written by "
                f"{holder.origin}: its newer version is still in flight"
            )
        await self._record_conflict(envelope, spec, holder, values)
        raise Reject(
            f"{spec.model.__tablename__}.{key} {values[key]!r} of {values['id']} from "
            f"{envelope.producer} collides with local record {holder.id}",
            reason=REASON_CONFLICT,
        )

    async def _record_conflict(
        self,
        envelope: Envelope,
        spec: Spec,
        holder: Organization | User,
        values: Mapping[str, Any],
    ) -> None:
        # Own transaction: the handler's savepoint is rolled back when it rejects.
        row = {
            "event_id": uuid.UUID(envelope.event_id),
            "resource_type": envelope.resource_type,
            "key_name": spec.natural_key,
            "key_value": str(values[spec.natural_key]),
            "local_id": holder.id,
            "incoming_id": values["id"],
            "incoming_origin": envelope.producer,
            "local_values": json_row(holder),
            "incoming_values": dict(envelope.payload),
        }
        async with self._engine.begin() as conn:
            await conn.execute(
                pg_insert(SyncConflict).values(**row).on_conflict_do_nothing(),
            )
        log.warning(
            "natural-key conflict",
            extra={
                "event_id": envelope.event_id,
                "resource_type": envelope.resource_type,
                "key": spec.natural_key,
                "local_id": str(holder.id),
                "incoming_id": str(values["id"]),
                "producer": envelope.producer,
            },
        )

    @staticmethod
    async def _record_stale(
        session: AsyncSession,
        envelope: Envelope,
        record_id: uuid.UUID,
        incoming: Version,
        current: Version,
    ) -> None:
        await session.execute(
            pg_insert(StaleEvent)
            .values(
                event_id=uuid.UUID(envelope.event_id),
                resource_type=envelope.resource_type,
                resource_id=record_id,
                incoming_updated_at=incoming.updated_at,
                incoming_origin=incoming.origin,
                local_updated_at=current.updated_at,
                local_origin=current.origin,
            )
            .on_conflict_do_nothing()
        )
        log_stale(envelope, record_id, incoming, current)
