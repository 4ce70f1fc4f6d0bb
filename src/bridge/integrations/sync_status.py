"""The ``/sync_status`` document of one bridge: what any application needs to see of
its own sync, from the bridge alone (no domain tables).

- ``app``, ``jetstream_connected``;
- ``outbox``: rows ``pending`` / ``sent`` / ``failed`` / ``retried`` and
  ``oldest_pending_age_seconds`` (plus the relay's publish totals where this process
  runs the relay);
- ``inbox``: records ``total`` / ``processed`` / ``failed`` / ``dead_lettered``;
- ``dead_letters``, ``dead_letters_oldest_age_seconds``: this app's DLQ (``None`` where
  its NATS user may not read the stream);
- ``consumer``: mode, and lag where the NATS user may read consumer info;
- ``reconciliation``: the last anti-entropy pass (``None`` before the first).

The counts come from the database whichever parts this process runs (the relay's and
the inbox processor's own where they run here, else :func:`tables_status`, which also
serves an application without a running bridge); the NATS side from
:meth:`bridge.runtime.Bridge.status`.  Nothing here contains a secret.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from bridge.inbox.processor import inbox_counts
from bridge.outbox.admin import outbox_counts
from bridge.reconcile.schedule import latest_run

if TYPE_CHECKING:
    from bridge.runtime import Bridge


async def tables_status(engine: AsyncEngine) -> dict[str, Any]:
    """``outbox``, ``inbox`` and ``reconciliation`` read from the bridge's tables."""
    outbox = asdict(await outbox_counts(engine))
    async with AsyncSession(engine) as session:
        inbox = asdict(await inbox_counts(session))
        reconciliation = await latest_run(await session.connection())
    return {"outbox": outbox, "inbox": inbox, "reconciliation": reconciliation}


async def sync_status(bridge: Bridge) -> dict[str, Any]:
    """The document (module doc) of ``bridge``, started or not."""
    nats_side = await bridge.status()  # counts of the parts this process runs, too
    async with AsyncSession(bridge.engine) as session:
        outbox = nats_side["outbox"] or asdict(await outbox_counts(bridge.engine))
        inbox = nats_side["inbox"] or asdict(await inbox_counts(session))
        reconciliation = await latest_run(await session.connection())
    return {
        "app": bridge.config.app_name,
        "jetstream_connected": nats_side["jetstream_connected"],
        "outbox": outbox,
        "inbox": inbox,
        "dead_letters": nats_side["dead_letters"],
        "dead_letters_oldest_age_seconds": nats_side["dead_letters_oldest_age_seconds"],
        "consumer": nats_side["consumer"],
        "reconciliation": reconciliation,
    }
