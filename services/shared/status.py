"""``GET /sync_status``: the seed's counters plus what this implementation adds.

Seed fields (same names, same meaning): ``organizations_count``, ``users_count``
(live records), ``last_organization_sync`` / ``last_user_sync`` (when the last
change from the other side was applied here), ``jetstream_connected``,
``inbox_events_count``, ``processed_events_count``, ``failed_events_count``
(inbox records whose last attempt failed and which will be redelivered).

Additions: ``dead_lettered_events_count``, ``outbox`` (pending / sent / failed /
oldest pending age), ``dead_letters`` (messages on this app's DLQ subject),
``conflicts`` (rows of ``sync_conflicts``), ``stale_events`` (rows of
``sync_stale_events``), ``consumer`` (mode, and lag where this app's NATS user
may read consumer info; ``None`` otherwise — e.g. restrictive push mode) and
``reconciliation`` (the last anti-entropy pass, periodic or ``bridge reconcile``:
``last_run_at``, ``ranges_compared``, ``rows_compared``, ``rows_repaired``,
``bytes_transferred``, ``duration`` seconds, ``error``; ``None`` before the first).

Counts come from this app's database in one round trip; NATS-side figures from
:meth:`bridge.runtime.Bridge.status` when the bridge runs.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from bridge.envelope import format_timestamp
from bridge.reconcile.schedule import latest_run

if TYPE_CHECKING:
    from bridge import Bridge

_COUNTS = text(
    """
    SELECT
      (SELECT count(*) FROM organizations WHERE deleted_at IS NULL) AS organizations,
      (SELECT count(*) FROM users WHERE deleted_at IS NULL) AS users,
      (SELECT max(processed_at) FROM bridge_inbox
         WHERE resource_type = 'organization' AND status = 'processed') AS last_org,
      (SELECT max(processed_at) FROM bridge_inbox
         WHERE resource_type = 'user' AND status = 'processed') AS last_user,
      (SELECT count(*) FROM bridge_inbox) AS inbox_total,
      (SELECT count(*) FROM bridge_inbox WHERE status = 'processed') AS inbox_processed,
      (SELECT count(*) FROM bridge_inbox WHERE status = 'failed') AS inbox_failed,
      (SELECT count(*) FROM bridge_inbox WHERE status = 'dead_lettered') AS inbox_dead,
      (SELECT count(*) FROM bridge_outbox WHERE status = 'pending') AS outbox_pending,
      (SELECT count(*) FROM bridge_outbox WHERE status = 'sent') AS outbox_sent,
      (SELECT count(*) FROM bridge_outbox WHERE status = 'failed') AS outbox_failed,
      (SELECT extract(epoch FROM now() - min(created_at)) FROM bridge_outbox
         WHERE status = 'pending') AS outbox_oldest,
      (SELECT count(*) FROM sync_conflicts) AS conflicts,
      (SELECT count(*) FROM sync_stale_events) AS stale
    """
)


async def sync_status(session: AsyncSession, bridge: Bridge | None) -> dict[str, Any]:
    row = (await session.execute(_COUNTS)).mappings().one()
    bridge_status: dict[str, Any] = {}
    if bridge is not None:
        bridge_status = await bridge.status()
    oldest = row["outbox_oldest"]
    return {
        "organizations_count": row["organizations"],
        "users_count": row["users"],
        "last_organization_sync": _iso(row["last_org"]),
        "last_user_sync": _iso(row["last_user"]),
        "jetstream_connected": bool(bridge_status.get("jetstream_connected", False)),
        "inbox_events_count": row["inbox_total"],
        "processed_events_count": row["inbox_processed"],
        "failed_events_count": row["inbox_failed"],
        "dead_lettered_events_count": row["inbox_dead"],
        "outbox": {
            "pending": row["outbox_pending"],
            "sent": row["outbox_sent"],
            "failed": row["outbox_failed"],
            "oldest_pending_age_seconds": float(oldest) if oldest is not None else None,
        },
        "dead_letters": bridge_status.get("dead_letters"),
        "conflicts": row["conflicts"],
        "stale_events": row["stale"],
        "consumer": bridge_status.get("consumer"),
        "reconciliation": await latest_run(await session.connection()),
        "sync_enabled": bridge is not None,
    }


def _iso(value: datetime | None) -> str | None:
    return format_timestamp(value) if value is not None else None
