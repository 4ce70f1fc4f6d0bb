"""Reconciliation on a schedule, and the last pass as ``/sync_status`` shows it.

:class:`PeriodicReconciler` runs :meth:`bridge.reconcile.reconciler.Reconciler.run`
every ``reconcile.interval`` seconds on :class:`~bridge._support.periodic.Periodic`
(off by default; ``bridge reconcile`` runs a pass on demand).  :func:`latest_run`
reads the last recorded pass from ``bridge_reconcile_runs``.
"""

from __future__ import annotations

import logging
from datetime import UTC
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from bridge._support.periodic import Periodic
from bridge.errors import ReconcileBusyError
from bridge.reconcile.reconciler import Reconciler
from bridge.reconcile.repair import ReconcileReport
from bridge.schema import reconcile_runs

log = logging.getLogger("bridge.reconcile")


class PeriodicReconciler:
    """Runs :meth:`Reconciler.run` every ``interval`` seconds (first pass after one
    interval) until stopped.  A failed pass is logged and recorded; the next one
    runs on schedule.  A pass that finds another one running skips its turn."""

    def __init__(self, reconciler: Reconciler, interval: float) -> None:
        self._reconciler = reconciler
        self._periodic = Periodic(
            self._pass, interval, name="bridge-reconcile", on_error=_pass_failed
        )
        self.last_report: ReconcileReport | None = None

    async def start(self) -> None:
        await self._periodic.start()

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop scheduling; a running pass gets ``timeout`` seconds, then is cancelled."""
        await self._periodic.stop(timeout)

    async def _pass(self) -> None:
        try:
            self.last_report = await self._reconciler.run()
        except ReconcileBusyError as exc:
            log.info("reconciliation skipped", extra={"reason": str(exc)})


def _pass_failed(exc: Exception) -> None:
    # Keep the schedule; the run's row holds the error.
    log.warning("reconciliation failed", extra={"error": repr(exc)})


async def latest_run(conn: AsyncConnection) -> dict[str, Any] | None:
    """The last recorded pass as ``/sync_status`` shows it (``None``: never ran)."""
    row = (
        (
            await conn.execute(
                select(reconcile_runs).order_by(reconcile_runs.c.started_at.desc()).limit(1)
            )
        )
        .mappings()
        .first()
    )
    if row is None:
        return None
    return {
        "last_run_at": row["started_at"].astimezone(UTC).isoformat(),
        "peer": row["peer"],
        "ranges_compared": row["ranges_compared"],
        "rows_compared": row["rows_compared"],
        "rows_repaired": row["repaired_to_peer"] + row["repaired_from_peer"],
        "repaired_to_peer": row["repaired_to_peer"],
        "repaired_from_peer": row["repaired_from_peer"],
        "bytes_transferred": row["bytes_sent"] + row["bytes_received"],
        "duration": row["duration_seconds"],
        "error": row["error"],
    }
