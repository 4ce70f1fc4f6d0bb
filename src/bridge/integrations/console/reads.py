"""What the console's page reads, each part on its own: a part that fails or is slow
(NATS or the database down, a permission missing) shows its error and the rest of
the page still renders.

:func:`read_overview` gathers, side by side and each within :data:`READ_TIMEOUT`:
health (:meth:`bridge.runtime.Bridge.health`), the outbox (backlog, retries, failures,
oldest pending age: :func:`bridge.outbox.admin.outbox_counts`), the inbox
(:func:`bridge.inbox.processor.inbox_counts`), the durable's lag and redeliveries and
the DLQ's size and oldest age (:class:`bridge.observability.status.BridgeStatus`; ``None``
where this NATS user may not read them), the latest reconciliation runs
(``bridge_reconcile_runs``) and the application's sync issues
(:class:`~.sources.SyncIssuesSource`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from bridge.inbox.processor import InboxCounts, inbox_counts
from bridge.integrations.console.sources import IssueTable, SyncIssuesSource
from bridge.outbox.admin import OutboxCounts, outbox_counts
from bridge.schema import reconcile_runs

if TYPE_CHECKING:
    from bridge.runtime import Bridge

T = TypeVar("T")
READ_TIMEOUT = 5.0
RECONCILE_ROWS = 20
ISSUE_ROWS = 20


@dataclass(frozen=True, slots=True)
class Part(Generic[T]):
    """One part of the page: its value, or why it is missing."""

    value: T | None = None
    error: str | None = None


async def guarded(read: Awaitable[T], *, timeout: float = READ_TIMEOUT) -> Part[T]:
    """``read``'s value, or its error as one line (a timeout says so)."""
    try:
        async with asyncio.timeout(timeout):
            return Part(await read)
    except TimeoutError:
        return Part(error=f"no answer within {timeout:g}s")
    except Exception as exc:  # shown in the page, never raised into it
        return Part(error=f"{type(exc).__name__}: {exc}"[:500])


@dataclass(frozen=True, slots=True)
class Overview:
    """Everything the page shows besides dead letters, charts and the audit trail."""

    health: Part[dict[str, Any]]
    outbox: Part[OutboxCounts]
    inbox: Part[InboxCounts]
    consumer: Part[dict[str, Any] | None]
    dead_letters: Part[int | None]
    oldest_dead_letter: Part[float | None]
    reconcile_runs: Part[list[dict[str, Any]]]
    issues: Part[Sequence[IssueTable]]


async def _inbox(engine: AsyncEngine) -> InboxCounts:
    async with AsyncSession(engine) as session:
        return await inbox_counts(session)


async def recent_reconcile_runs(engine: AsyncEngine, limit: int) -> list[dict[str, Any]]:
    """The latest reconciliation passes, newest first, with their repairs."""
    query = select(reconcile_runs).order_by(reconcile_runs.c.started_at.desc()).limit(limit)
    async with engine.connect() as conn:
        return [dict(row) for row in (await conn.execute(query)).mappings()]


async def _nothing() -> Part[Sequence[IssueTable]]:
    return Part()


async def read_overview(bridge: Bridge, issues: SyncIssuesSource | None) -> Overview:
    """Every part of :class:`Overview`, read side by side (module doc)."""
    engine = bridge.engine
    status = bridge.observed
    run = asyncio.create_task
    health = run(guarded(bridge.health()))
    outbox = run(guarded(outbox_counts(engine)))
    inbox = run(guarded(_inbox(engine)))
    consumer = run(guarded(status.consumer_lag()))
    dead_letters = run(guarded(status.dead_letter_count()))
    oldest = run(guarded(status.oldest_dead_letter_age()))
    runs = run(guarded(recent_reconcile_runs(engine, RECONCILE_ROWS)))
    found: asyncio.Task[Part[Sequence[IssueTable]]] = run(
        guarded(issues.read(engine, ISSUE_ROWS)) if issues is not None else _nothing()
    )
    return Overview(
        await health, await outbox, await inbox, await consumer, await dead_letters,
        await oldest, await runs, await found,
    )  # fmt: skip
