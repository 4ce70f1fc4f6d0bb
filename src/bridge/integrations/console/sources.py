"""What an application adds to the console: its own records of sync conflicts and
stale events, read through :class:`SyncIssuesSource` so the console imports nothing
of the application.

The bridge applies last-writer-wins through handlers the application writes
(:class:`bridge.sync.lww.LastWriterWins` calls back ``on_conflict``/``on_stale``);
where the application records what they report is its own choice.  A source gives
the console the latest of them as :class:`IssueTable` values (a title, column names,
rows of text, and how many there are in all); the console escapes every cell.
Without a source the section says none is configured.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncEngine


@dataclass(frozen=True, slots=True)
class IssueTable:
    """The latest rows of one kind of sync issue (``total``: how many are recorded)."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    total: int


class SyncIssuesSource(Protocol):
    """Reads the application's recent conflicts and stale events from its database."""

    async def read(self, engine: AsyncEngine, limit: int) -> Sequence[IssueTable]:
        """At most ``limit`` rows per table, newest first."""
        ...
