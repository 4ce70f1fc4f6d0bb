"""API writes and reads of organizations and users, inside the caller's transaction.

Contract:

- Reads hide tombstones (``deleted_at IS NOT NULL``): a deleted record is a 404.
- Every write makes a new version of the row: ``updated_at = max(now, old + 1 µs)``
  and ``origin = <this app>`` (:func:`bridge.sync.versions.next_updated_at`).
  The row is locked (``FOR NO KEY UPDATE``) while its version is computed, so two
  concurrent writes to one row still produce strictly increasing versions; the
  lock does not block a concurrent user insert referencing the row (``KEY SHARE``).
- A write that changes nothing (PATCH with the current values) is a no-op: no new
  version, so no outbox row and no event.
- A write on a row whose stored version is more than ``max_clock_skew`` ahead of the
  clock (it got in before versions were bounded, or by SQL) is refused:
  :class:`~services.shared.errors.StateConflict` (409) naming the record, its version
  and the repair, instead of a version just as far in the future or an overflow.
- Natural-key rules (unique live ``domain`` / ``email``, existing organization) are
  checked first for a clear 422; the unique indexes still decide under races and
  :func:`integrity_error_to_invalid` maps their violation to the same 422.
- The caller owns the transaction (commit, rollback); nothing here commits.
  With the bridge's session factory, the flush writes the outbox row in it
  (``<resource>.created`` / ``.updated``; a soft delete, an UPDATE to the database,
  is ``<resource>.deleted`` because the model says so).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Select, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from bridge.config import DEFAULT_MAX_CLOCK_SKEW
from bridge.sync.versions import FutureVersion, next_updated_at
from services.shared.errors import InvalidInput, StateConflict
from services.shared.models import (
    ORGANIZATION_DOMAIN_INDEX,
    USER_EMAIL_INDEX,
    Organization,
    User,
)
from services.shared.schemas import (
    OrganizationCreate,
    OrganizationUpdate,
    UserCreate,
    UserUpdate,
)

Row = TypeVar("Row", Organization, User)
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class Repository:
    """Domain reads and writes for one app (its name becomes ``origin`` of its writes).

    ``clock`` and ``max_clock_skew``: the bridge config's (one clock per process).
    """

    def __init__(
        self,
        app_name: str,
        *,
        clock: Clock = utc_now,
        max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW,
    ) -> None:
        self.app_name = app_name
        self._clock = clock
        self._max_clock_skew = max_clock_skew

    # -- organizations ----------------------------------------------------------------
    async def list_organizations(
        self, session: AsyncSession, *, limit: int, offset: int
    ) -> tuple[list[Organization], int]:
        query = select(Organization).where(Organization.deleted_at.is_(None))
        return await self._page(session, query, Organization, limit=limit, offset=offset)

    async def get_organization(
        self, session: AsyncSession, org_id: int, *, lock: bool = False
    ) -> Organization | None:
        query = select(Organization).where(
            Organization.id == org_id, Organization.deleted_at.is_(None)
        )
        if lock:
            query = query.with_for_update(key_share=True)
        return (await session.execute(query)).scalar_one_or_none()

    async def create_organization(
        self, session: AsyncSession, body: OrganizationCreate
    ) -> Organization:
        await self._check_domain_free(session, body.domain, except_id=None)
        now = self._clock()
        org = Organization(
            name=body.name,
            domain=body.domain,
            active=body.active,
            created_at=now,
            updated_at=now,
            origin=self.app_name,
        )
        session.add(org)
        await session.flush()
        return org

    async def update_organization(
        self, session: AsyncSession, org_id: int, body: OrganizationUpdate
    ) -> Organization | None:
        org = await self.get_organization(session, org_id, lock=True)
        if org is None:
            return None
        changes = _changes(org, body.model_dump(exclude_unset=True))
        if "domain" in changes:
            await self._check_domain_free(session, changes["domain"], except_id=org.id)
        if changes:
            for name, value in changes.items():
                setattr(org, name, value)
            self._new_version(org)
            await session.flush()
        return org

    async def delete_organization(self, session: AsyncSession, org_id: int) -> bool:
        """Soft-delete; refuses (409) while the organization has live users."""
        org = await self.get_organization(session, org_id, lock=True)
        if org is None:
            return False
        users = await session.scalar(
            select(func.count())
            .select_from(User)
            .where(User.organization_id == org_id, User.deleted_at.is_(None))
        )
        if users:
            raise StateConflict(
                f"organization {org_id} still has {users} user(s); delete them first"
            )
        await self._tombstone(session, org)
        return True

    # -- users --------------------------------------------------------------------------
    async def list_users(
        self,
        session: AsyncSession,
        *,
        limit: int,
        offset: int,
        organization_id: int | None = None,
    ) -> tuple[list[User], int]:
        query = select(User).where(User.deleted_at.is_(None))
        if organization_id is not None:
            query = query.where(User.organization_id == organization_id)
        return await self._page(session, query, User, limit=limit, offset=offset)

    async def get_user(
        self, session: AsyncSession, user_id: int, *, lock: bool = False
    ) -> User | None:
        query = select(User).where(User.id == user_id, User.deleted_at.is_(None))
        if lock:
            query = query.with_for_update(key_share=True)
        return (await session.execute(query)).scalar_one_or_none()

    async def create_user(self, session: AsyncSession, body: UserCreate) -> User:
        await self._check_organization(session, body.organization_id)
        await self._check_email_free(session, body.email, except_id=None)
        now = self._clock()
        user = User(
            organization_id=body.organization_id,
            name=body.name,
            email=body.email,
            role=body.role,
            active=body.active,
            created_at=now,
            updated_at=now,
            origin=self.app_name,
        )
        session.add(user)
        await session.flush()
        return user

    async def update_user(
        self, session: AsyncSession, user_id: int, body: UserUpdate
    ) -> User | None:
        user = await self.get_user(session, user_id, lock=True)
        if user is None:
            return None
        changes = _changes(user, body.model_dump(exclude_unset=True))
        if "organization_id" in changes:
            await self._check_organization(session, changes["organization_id"])
        if "email" in changes:
            await self._check_email_free(session, changes["email"], except_id=user.id)
        if changes:
            for name, value in changes.items():
                setattr(user, name, value)
            self._new_version(user)
            await session.flush()
        return user

    async def delete_user(self, session: AsyncSession, user_id: int) -> bool:
        user = await self.get_user(session, user_id, lock=True)
        if user is None:
            return False
        await self._tombstone(session, user)
        return True

    # -- helpers ----------------------------------------------------------------------
    def _new_version(self, row: Organization | User) -> None:
        try:
            row.updated_at = next_updated_at(
                row.updated_at, self._clock(), max_clock_skew=self._max_clock_skew
            )
        except FutureVersion as exc:
            kind = "organization" if isinstance(row, Organization) else "user"
            raise StateConflict(
                f"{kind} {row.id} cannot be changed: {exc}. Repair it on this side: set its "
                f"updated_at to the present (UPDATE {row.__tablename__} SET updated_at = now() "
                f"WHERE id = {row.id}), then run `bridge reconcile` so the peer converges"
            ) from exc
        row.origin = self.app_name

    async def _tombstone(self, session: AsyncSession, row: Organization | User) -> None:
        # Captured as "<resource>.deleted": the tombstone column (SyncedRow.__bridge_tombstone__).
        self._new_version(row)
        row.deleted_at = row.updated_at
        await session.flush()

    @staticmethod
    async def _page(
        session: AsyncSession,
        query: Select[Row],
        model: type[Row],
        *,
        limit: int,
        offset: int,
    ) -> tuple[list[Row], int]:
        total = await session.scalar(select(func.count()).select_from(query.subquery()))
        rows = await session.scalars(
            query.order_by(model.created_at, model.id).limit(limit).offset(offset)
        )
        return list(rows), int(total or 0)

    @staticmethod
    async def _check_domain_free(
        session: AsyncSession, domain: str, *, except_id: int | None
    ) -> None:
        query = select(Organization.id).where(
            Organization.domain == domain, Organization.deleted_at.is_(None)
        )
        if except_id is not None:
            query = query.where(Organization.id != except_id)
        if await session.scalar(query.limit(1)) is not None:
            raise InvalidInput.field("domain", f"{domain!r} is already taken", "unique")

    @staticmethod
    async def _check_email_free(
        session: AsyncSession, email: str, *, except_id: int | None
    ) -> None:
        query = select(User.id).where(User.email == email, User.deleted_at.is_(None))
        if except_id is not None:
            query = query.where(User.id != except_id)
        if await session.scalar(query.limit(1)) is not None:
            raise InvalidInput.field("email", f"{email!r} is already taken", "unique")

    @staticmethod
    async def _check_organization(session: AsyncSession, org_id: int) -> None:
        found = await session.scalar(
            select(Organization.id).where(
                Organization.id == org_id, Organization.deleted_at.is_(None)
            )
        )
        if found is None:
            raise InvalidInput.field(
                "organization_id", f"organization {org_id} does not exist", "not_found"
            )


def _changes(row: Organization | User, values: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``values`` that differs from the row."""
    return {name: value for name, value in values.items() if getattr(row, name) != value}


def integrity_error_to_invalid(error: IntegrityError) -> InvalidInput | None:
    """Map a unique-index violation lost to a concurrent write to the API's 422.

    ``None`` when the violation is not one the API knows (then it is a real bug).
    """
    cause = error.orig.__cause__ if error.orig is not None else None
    constraint = getattr(cause, "constraint_name", None) or ""
    text = f"{constraint} {error.orig}"
    if ORGANIZATION_DOMAIN_INDEX in text:
        return InvalidInput.field("domain", "is already taken", "unique")
    if USER_EMAIL_INDEX in text:
        return InvalidInput.field("email", "is already taken", "unique")
    if "fk_users_organization_id_organizations" in text:
        return InvalidInput.field("organization_id", "organization does not exist", "not_found")
    return None
