"""Where a relay's next claim resumes its scan of the due index (:class:`ClaimCursor`).

Why: a claim scans the partial index ``ix_bridge_outbox_due`` in
``(next_attempt_at, id)`` order from its start.  Every row the relay marked sent (and,
while the lease update is not HOT, every row it leased) leaves an index entry behind
that only vacuum removes; until then each claim walks past all of them, so a claim's
cost grew with how many rows were drained since the last vacuum (docs/BENCHMARKS.md,
"Flat with size").  While a drain goes on, the next claim instead starts just after
the last row the previous claim took: it reads about ``limit`` index entries however
much was drained before.

Contract:
- :meth:`ClaimCursor.after` is the position to resume from, or ``None`` (scan from the
  start).  A position is only a hint for *where to look*: which rows may be claimed,
  and in which order per record, is decided by the claim statement alone over all
  pending rows (:mod:`bridge.outbox._store`), so a stale position can delay rows, never
  reorder or duplicate them.  A pending row behind the position — its record had a row
  in flight when the scan passed it, a transaction that began before the position's
  row committed later, a dead relay's lease expired, a row was released — also holds
  back its record's later rows (they are not claimed without it), and is taken by the
  next scan from the start.
- A scan from the start happens when: the previous claim came back short (fewer rows
  than asked: the backlog is drained, or rows were refused), a claim failed, this
  relay released rows or a publish failed (:meth:`ClaimCursor.reset`), or
  ``rescan_interval`` seconds passed since the last scan from the start — which bounds
  how long a row behind the position waits while a long backlog drains.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime

#: Seconds after which a claim scans the due index from its start again, even while
#: claims come back full (module doc).
RESCAN_INTERVAL = 1.0

Position = tuple[datetime, int]


class ClaimCursor:
    """The resume position of one relay's claims (module doc)."""

    def __init__(self, *, rescan_interval: float = RESCAN_INTERVAL) -> None:
        self._rescan_interval = rescan_interval
        self._position: Position | None = None
        self._scanned_from_start = time.monotonic()  # of the last scan from the start

    @property
    def position(self) -> Position | None:
        """The last full claim's position, however old (for tools and tests)."""
        return self._position

    def after(self) -> Position | None:
        """Where the next claim resumes (``None``: from the start of the due index)."""
        if self._position is not None:
            if time.monotonic() - self._scanned_from_start < self._rescan_interval:
                return self._position
            self._position = None
        self._scanned_from_start = time.monotonic()
        return None

    def advance(self, claimed: Sequence[Position], full: bool) -> None:
        """After a claim returned ``claimed`` (their due-index keys); ``full``: it
        returned as many rows as it asked for (else the next claim scans from the start)."""
        self._position = max(claimed) if full and claimed else None

    def reset(self) -> None:
        """The next claim scans from the start (a row may now be due behind the position)."""
        self._position = None
