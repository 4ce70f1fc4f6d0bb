"""The shared domain: Organization and User, plus the sync bookkeeping tables.

Identities are integers (``BIGINT``) taken by the database of the system that creates
the record from ``bridge_next_id()`` (:mod:`bridge.ids`: time-ordered, with the system's
number in them, below 2**53 so JSON keeps them exact), never an autoincrement, so a
record has the same id on both sides and two systems never issue the same id
(docs/IDENTITIES.md).  The column default is the database's: ORM, Core and ``psql``
inserts all get an id; a peer's row arrives with its id.

Deletes are **soft** (``deleted_at``): a deleted row stays as a tombstone that
carries its version (``updated_at``, ``origin``) like any other row.  We chose
this over a separate tombstone table because it keeps last-writer-wins uniform —
a delete is just one more version of the row, so "delete vs. concurrent update"
and "delete arrives before create" need no special cases, and a tombstone's
foreign keys stay valid (users of a deleted organization still point at a row).
The cost: the unique natural keys (``domain``, ``email``) are *partial* unique
indexes ``WHERE deleted_at IS NULL`` (a deleted organization frees its domain),
and the API hides tombstones.

The models use :class:`bridge.outbox.capture.Synced`: the capture trigger of their
tables (migration 0007) writes an outbox row with the full row snapshot in the
same transaction as any write, whatever made it.  A soft delete is published as
``<resource>.deleted``: ``__bridge_tombstone__ = "deleted_at"``.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    MetaData,
    String,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bridge import Synced

#: Deterministic constraint names, so migrations and IntegrityError handling agree.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: Names of the partial unique indexes on the natural keys (the API maps them to 422s).
ORGANIZATION_DOMAIN_INDEX = "uq_organizations_domain_live"
USER_EMAIL_INDEX = "uq_users_email_live"
#: The ids' default: the database's generator (bridge.ids), set up by migration 0010.
NEXT_ID = text("bridge_next_id()")


class Base(DeclarativeBase):
    """Declarative base with the services' own metadata (not the bridge's)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


metadata = Base.metadata


class SyncedRow(Synced):
    """Columns every synced record has: its version (``updated_at``, ``origin``) for
    last-writer-wins, and ``deleted_at`` for tombstones (soft delete)."""

    __bridge_version__: ClassVar[tuple[str, str]] = ("updated_at", "origin")

    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    origin: Mapped[str] = mapped_column(String(64))
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    #: A tombstone's events are ``deleted`` (a soft delete is an UPDATE to the
    #: database, a delete to the peer); a live row's are the change itself.
    __bridge_tombstone__: ClassVar[str | None] = "deleted_at"


class Organization(SyncedRow, Base):
    """An organization; ``domain`` is unique among live (not deleted) organizations."""

    __tablename__ = "organizations"
    __bridge_resource__: ClassVar[str] = "organization"
    __bridge_reconcile__: ClassVar[bool] = True
    __bridge_natural_keys__: ClassVar[tuple[str, ...]] = ("domain",)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, server_default=NEXT_ID)
    name: Mapped[str] = mapped_column(String(255))
    domain: Mapped[str] = mapped_column(String(255))

    __table_args__ = (
        Index(
            ORGANIZATION_DOMAIN_INDEX,
            "domain",
            unique=True,
            postgresql_where=text("deleted_at IS NULL"),
        ),
    )


class User(SyncedRow, Base):
    """A user of an organization; ``email`` is unique among live users."""

    __tablename__ = "users"
    __bridge_resource__: ClassVar[str] = "user"
    __bridge_reconcile__: ClassVar[bool] = True
    __bridge_natural_keys__: ClassVar[tuple[str, ...]] = ("email",)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, server_default=NEXT_ID)
    organization_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("organizations.id"), index=True
    )
    name: Mapped[str] = mapped_column(String(255))
    email: Mapped[str] = mapped_column(String(320))
    role: Mapped[str] = mapped_column(String(32))

    __table_args__ = (
        Index(
            USER_EMAIL_INDEX,
            "email",
            unique=True,
            postgresql_where=text("deleted_at IS NULL"),
        ),
    )


class SyncConflict(Base):
    """A natural-key collision between two different records (one row per incoming event).

    Written in its own transaction by the sync handler (the handler's own writes
    are rolled back when it rejects the event), keyed by the event id so a
    redelivery does not record it twice.
    """

    __tablename__ = "sync_conflicts"

    event_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    resource_type: Mapped[str] = mapped_column(String(64))
    key_name: Mapped[str] = mapped_column(String(64))
    key_value: Mapped[str] = mapped_column(String(320))
    local_id: Mapped[int] = mapped_column(BigInteger)
    incoming_id: Mapped[int] = mapped_column(BigInteger)
    incoming_origin: Mapped[str] = mapped_column(String(64))
    local_values: Mapped[dict[str, Any]] = mapped_column(JSONB)
    incoming_values: Mapped[dict[str, Any]] = mapped_column(JSONB)
    detected_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class StaleEvent(Base):
    """An incoming change that lost to the local version (acked, kept for the count/audit)."""

    __tablename__ = "sync_stale_events"

    event_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    resource_type: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[int] = mapped_column(BigInteger)
    incoming_updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    incoming_origin: Mapped[str] = mapped_column(String(64))
    local_updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    local_origin: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
