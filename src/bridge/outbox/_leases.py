"""``LeaseKeeper``: the leases of the outbox rows a relay holds do not expire under it.

Contract:
- A relay *holds* a row from the claim that leased it until its batch is settled
  (marked sent, failed or released in the database): :meth:`LeaseKeeper.hold`, then
  :meth:`LeaseKeeper.settling` around the settle.  A step that fails with an error
  (not a cancellation) drops its rows too: nobody will settle them, so their lease
  runs out and another relay (or this one) publishes them again.
- While started, every ``lease / 3`` seconds the leases of the held rows are renewed
  to ``now() + lease`` (:meth:`bridge.outbox._store.OutboxStore.renew`), so a batch
  slower than ``relay.lease`` — PubAcks that take long, a long wait for
  ``relay.max_in_flight`` — is not taken over by another relay while this one still
  works on it.  Renewing needs a running event loop and database: a relay that hangs
  stops renewing, and its rows are taken over once their lease runs out.
- A renewal that fails (database hiccup) is logged and tried at the next tick; one
  missed renewal still leaves a third of the lease.
- ``start()`` / ``stop(timeout)`` (:class:`bridge._support.periodic.Periodic` owns the task).
  ``stop`` hands back the rows still held — those of batches a stop had to cancel —
  at once (:meth:`bridge.outbox._store.OutboxStore.release`): nothing waits for a
  lease to expire.  Call it only once nothing will settle any more.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from bridge._support.periodic import Periodic
from bridge.outbox._store import OutboxStore

log = logging.getLogger("bridge.relay")


class LeaseKeeper:
    """Renews the leases of the rows a relay holds (module doc)."""

    def __init__(self, store: OutboxStore, *, lease: float, name: str) -> None:
        self._store = store
        self._held: set[int] = set()
        self._periodic = Periodic(
            self._renew, lease / 3, name=f"bridge-relay-leases-{name}", on_error=self._failed
        )
        self.renewals_total = 0

    @property
    def held(self) -> frozenset[int]:
        """Ids of the rows claimed and not yet settled."""
        return frozenset(self._held)

    def hold(self, ids: Iterable[int]) -> None:
        self._held.update(ids)

    def drop(self, ids: Iterable[int]) -> None:
        self._held.difference_update(ids)

    @contextmanager
    def settling(self, ids: list[int], *, on_success: bool = True) -> Iterator[None]:
        """Around a step on held rows ``ids``: drop them when it raises an error, and
        when it succeeds if ``on_success``; a cancelled step leaves them to ``stop``."""
        try:
            yield
        except Exception:
            self.drop(ids)
            raise
        if on_success:
            self.drop(ids)

    async def start(self) -> None:
        await self._periodic.start()

    async def stop(self, timeout: float = 10.0) -> int:
        """Stop renewing; release the rows still held; return how many were still ours."""
        await self._periodic.stop(timeout)
        ids, self._held = sorted(self._held), set()
        if not ids:
            return 0
        try:
            return await asyncio.wait_for(self._store.release(ids), timeout)
        except Exception as exc:  # they stay leased until the lease or the lock is gone
            log.warning(
                "releasing leased outbox rows failed",
                extra={"owner": self._store.owner, "rows": len(ids), "error": repr(exc)},
            )
            return 0

    async def _renew(self) -> None:
        ids = sorted(self._held)
        if ids:
            renewed = await self._store.renew(ids)
            self.renewals_total += renewed
            log.debug("relay leases renewed", extra={"rows": len(ids), "renewed": renewed})

    def _failed(self, exc: Exception) -> None:
        log.warning(
            "renewing relay leases failed; will retry",
            extra={"owner": self._store.owner, "rows": len(self._held), "error": repr(exc)},
        )
