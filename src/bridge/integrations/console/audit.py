"""The console's audit trail: every action — done, failed or refused — is logged and
kept, and the page lists the latest.

:meth:`AuditTrail.record` writes one structured log line (``bridge.console``:
``actor`` — the operator name of the sign-in, or ``anonymous`` —, ``client`` — the
request's address —, ``action``, ``target`` — which dead letters —, ``outcome``,
``detail``; never the token), keeps the entry in this process's memory and inserts
it into ``bridge_console_audit`` (:data:`bridge.schema.console_audit`), where every
process of the app sees it.  An insert that fails (the table not migrated, the
database down) is logged as an error and the entry stays in memory, marked unsaved:
the action is never undone or hidden for it.

Refused requests can be sent by anyone who reaches the page, so at most
:data:`REFUSALS_PER_MINUTE` of them a minute go to the table; the rest are logged
and kept in memory only (the table cannot be flooded).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from sqlalchemy import RowMapping, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bridge.schema import console_audit

log = logging.getLogger("bridge.console")

OK, FAILED, PARTIAL, REFUSED = "ok", "failed", "partial", "refused"
REFUSALS_PER_MINUTE = 30
#: Longest ``target`` and ``detail`` kept (the rest is cut with an ellipsis).
TEXT_LIMIT = 2000
DB_TIMEOUT = 3.0


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One console action and how it ended (``saved``: in the table)."""

    at: datetime
    actor: str
    client: str
    action: str
    target: str
    outcome: str
    detail: str = ""
    saved: bool = True


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _entry(row: RowMapping) -> AuditEntry:
    return AuditEntry(
        at=row["at"],
        actor=row["actor"],
        client=row["client"] or "",
        action=row["action"],
        target=row["target"],
        outcome=row["outcome"],
        detail=row["detail"] or "",
    )


class AuditTrail:
    """Logs, keeps and stores the console's actions for one app (module doc)."""

    def __init__(self, engine: AsyncEngine, app: str, *, keep: int = 200) -> None:
        self._engine = engine
        self._app = app
        self._memory: deque[AuditEntry] = deque(maxlen=keep)
        self._refusals: deque[float] = deque()

    async def record(
        self,
        *,
        actor: str,
        client: str,
        action: str,
        target: str,
        outcome: str,
        detail: str = "",
    ) -> AuditEntry:
        """Log, keep and store one action (module doc); never raises for the store."""
        entry = AuditEntry(
            at=datetime.now(UTC),
            actor=_cut(actor, 64),
            client=_cut(client, 128),
            action=_cut(action, 32),
            target=_cut(target, TEXT_LIMIT),
            outcome=outcome,
            detail=_cut(detail, TEXT_LIMIT),
        )
        fields = {
            "actor": entry.actor, "client": entry.client, "action": entry.action,
            "target": entry.target, "outcome": entry.outcome, "detail": entry.detail,
        }  # fmt: skip
        level = logging.INFO if outcome == OK else logging.WARNING
        log.log(level, "console action", extra=fields)
        if outcome == REFUSED and not self._refusal_allowed():
            entry = replace(entry, saved=False)
        else:
            try:
                async with asyncio.timeout(DB_TIMEOUT), self._engine.begin() as conn:
                    await conn.execute(insert(console_audit).values(app=self._app, **fields))
            except Exception as exc:  # the action happened: keep it, say why it is unsaved
                log.error(
                    "console action not stored in bridge_console_audit; kept in memory",
                    extra={**fields, "error": repr(exc),
                           "hint": "run the migrations (bridge_console_audit)"},
                )  # fmt: skip
                entry = replace(entry, saved=False)
        self._memory.append(entry)
        return entry

    def _refusal_allowed(self) -> bool:
        now = time.monotonic()
        while self._refusals and now - self._refusals[0] > 60:
            self._refusals.popleft()
        if len(self._refusals) >= REFUSALS_PER_MINUTE:
            return False
        self._refusals.append(now)
        return True

    async def recent(self, limit: int) -> tuple[list[AuditEntry], str | None]:
        """The latest ``limit`` entries, newest first, and a note when the table could
        not be read (then: this process's entries only)."""
        unsaved = [e for e in self._memory if not e.saved]
        note: str | None = None
        try:
            async with asyncio.timeout(DB_TIMEOUT), self._engine.connect() as conn:
                rows = (
                    await conn.execute(
                        select(console_audit)
                        .where(console_audit.c.app == self._app)
                        .order_by(console_audit.c.id.desc())
                        .limit(limit)
                    )
                ).mappings()
                stored = [_entry(row) for row in rows]
        except Exception as exc:  # the page still renders, from memory
            note = f"audit table unreadable ({type(exc).__name__}): this process's entries only"
            stored = [e for e in self._memory if e.saved]
        entries = sorted([*stored, *unsaved], key=lambda e: e.at, reverse=True)
        return entries[:limit], note
