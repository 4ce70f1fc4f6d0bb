"""The services' operator console at ``/console`` (:mod:`bridge.integrations.console`),
with this domain's conflicts and stale events.

:class:`SyncTablesIssues` reads the latest rows of ``sync_conflicts`` (natural-key
collisions, each also dead-lettered) and ``sync_stale_events`` (incoming changes
older than the local version, acked) for the console's "Conflicts and stale events"
section — the :class:`bridge.integrations.console.sources.SyncIssuesSource` of this
domain, so the library never imports the services.  :func:`install_console` mounts
the console on a service app; its operator token comes from ``BRIDGE_CONSOLE_TOKEN``
unless options are given.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bridge.envelope import format_timestamp
from bridge.integrations.console.app import Console, mount_console
from bridge.integrations.console.options import ConsoleOptions, options_from_env
from bridge.integrations.console.sources import IssueTable
from services.shared.models import StaleEvent, SyncConflict


def _text(value: Any) -> str:
    if value is None:
        return ""
    if hasattr(value, "tzinfo"):
        return format_timestamp(value)
    return str(value)


class SyncTablesIssues:
    """The latest conflicts and stale events of this domain's tables (module doc)."""

    async def read(self, engine: AsyncEngine, limit: int) -> Sequence[IssueTable]:
        conflict_cols = (
            SyncConflict.detected_at, SyncConflict.resource_type, SyncConflict.key_name,
            SyncConflict.key_value, SyncConflict.local_id, SyncConflict.incoming_id,
            SyncConflict.incoming_origin, SyncConflict.event_id,
        )  # fmt: skip
        stale_cols = (
            StaleEvent.received_at, StaleEvent.resource_type, StaleEvent.resource_id,
            StaleEvent.incoming_updated_at, StaleEvent.incoming_origin,
            StaleEvent.local_updated_at, StaleEvent.local_origin, StaleEvent.event_id,
        )  # fmt: skip
        async with engine.connect() as conn:
            conflicts = (
                await conn.execute(
                    select(*conflict_cols).order_by(SyncConflict.detected_at.desc()).limit(limit)
                )
            ).all()
            stale = (
                await conn.execute(
                    select(*stale_cols).order_by(StaleEvent.received_at.desc()).limit(limit)
                )
            ).all()
            totals = (
                await conn.execute(
                    select(
                        select(func.count()).select_from(SyncConflict).scalar_subquery(),
                        select(func.count()).select_from(StaleEvent).scalar_subquery(),
                    )
                )
            ).one()
        return (
            IssueTable(
                title="Conflicts (natural-key collisions, dead-lettered)",
                columns=("detected", "resource", "key", "value", "local id", "incoming id",
                         "incoming origin", "event id"),
                rows=tuple(tuple(_text(v) for v in row) for row in conflicts),
                total=int(totals[0]),
            ),
            IssueTable(
                title="Stale events (older than the local version, acked)",
                columns=("received", "resource", "record", "incoming version", "incoming origin",
                         "local version", "local origin", "event id"),
                rows=tuple(tuple(_text(v) for v in row) for row in stale),
                total=int(totals[1]),
            ),
        )  # fmt: skip


def install_console(app: FastAPI, options: ConsoleOptions | None = None) -> Console:
    """Mount the console at ``/console`` on a service app (``options``: default from the
    environment, ``BRIDGE_CONSOLE_TOKEN``)."""
    console = Console(options or options_from_env(os.environ), issues=SyncTablesIssues())
    mount_console(app, console)
    return console
