"""Inbox retention: delete settled inbox records once they are too old to matter.

Contract:

- Every ``consumer.inbox_cleanup_interval`` seconds, records settled more than
  ``consumer.inbox_retention`` seconds ago are deleted: ``processed`` ones by
  ``processed_at``, ``dead_lettered`` ones by ``received_at``
  (:func:`bridge.inbox._store.purge_settled`).  ``failed`` records — events still to
  be redelivered — are never deleted.
- Deletes run in chunks of ``PURGE_CHUNK`` records, each in its own short transaction,
  so a large backlog never holds a long lock on the table the consumer writes.
- A failed cleanup is logged and tried again at the next interval; it never stops the
  consumer.
- What a deleted record gives up: it is the idempotency key of its event.  An event
  delivered again after its record is gone is applied again.  The default retention
  (7 days) equals the default ``stream_max_age``, so the stream no longer holds a
  message whose record was purged; a shorter retention relies on the handlers (the
  services' last-writer-wins handlers treat an old version as stale: no change).

Runs where the consumer runs (:class:`bridge.runtime.Bridge` starts it with the
consumer when ``use_inbox`` is on); several replicas purging at once is harmless.
"""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bridge._support.periodic import Periodic
from bridge.config import ConsumerOptions
from bridge.inbox._store import purge_settled

log = logging.getLogger("bridge.inbox_retention")

PURGE_CHUNK = 5000


class InboxRetention:
    """The cleanup loop of one process's inbox (``start()`` / ``stop(timeout)``)."""

    def __init__(self, engine: AsyncEngine, options: ConsumerOptions) -> None:
        self._sessions = async_sessionmaker(engine, class_=AsyncSession)
        self._retention = options.inbox_retention
        self._interval = options.inbox_cleanup_interval
        self._periodic = Periodic(
            self._cleanup, self._interval, name="bridge-inbox-retention", on_error=_failed
        )
        self.purged_total = 0

    @property
    def running(self) -> bool:
        return self._periodic.running

    async def start(self) -> None:
        """Start the cleanup loop (idempotent); the first cleanup is one interval away."""
        await self._periodic.start()

    async def stop(self, timeout: float = 10.0) -> None:
        """End the loop; a chunk in progress finishes (cancelled after ``timeout``)."""
        await self._periodic.stop(timeout)

    async def purge(self, older_than: float | None = None) -> int:
        """Delete settled records older than ``older_than`` (default: the retention)."""
        age = self._retention if older_than is None else older_than
        total = 0
        while True:
            async with self._sessions() as session, session.begin():
                deleted = await purge_settled(session, age, PURGE_CHUNK)
            total += deleted
            if deleted < PURGE_CHUNK:
                self.purged_total += total
                return total

    async def _cleanup(self) -> None:
        deleted = await self.purge()
        if deleted:
            log.info("purged settled inbox records", extra={"records": deleted})


def _failed(exc: Exception) -> None:
    log.warning("inbox retention cleanup failed", extra={"error": repr(exc)})
