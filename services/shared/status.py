"""The service's operations routes: ``GET /health``, ``/metrics``, ``/sync_status`` and
``/asyncapi.json``.

With sync on, the library's router serves them from the running bridge
(:func:`bridge.integrations.fastapi.bridge_router`: health with 503 when degraded, the
bridge's metrics registry — to which :func:`services.shared.observability.service_metrics`
adds this domain's table counts — the bridge's sync status document, and the event
catalog, committed as docs/asyncapi/<app>.json); this module
only adds the domain's fields to ``/sync_status`` and keeps the seed's names
(:func:`domain_sync_status`).  With sync off there is no bridge: the same three routes
answer from the database alone (:func:`local_router`).

``/sync_status`` — seed fields (same names, same meaning): ``organizations_count``,
``users_count`` (live records), ``last_organization_sync`` / ``last_user_sync`` (when
the last change from the other side was applied here), ``jetstream_connected``,
``inbox_events_count``, ``processed_events_count``, ``failed_events_count`` (inbox
records whose last attempt failed and which will be redelivered).

Additions: ``dead_lettered_events_count``, ``outbox`` (pending / sent / failed /
oldest pending age), ``dead_letters`` (messages on this app's DLQ subject),
``conflicts`` (rows of ``sync_conflicts``), ``stale_events`` (rows of
``sync_stale_events``), ``consumer`` (mode, and lag where this app's NATS user
may read consumer info; ``None`` otherwise — e.g. restrictive push mode),
``reconciliation`` (the last anti-entropy pass, periodic or ``bridge reconcile``:
``last_run_at``, ``ranges_compared``, ``rows_compared``, ``rows_repaired``,
``bytes_transferred``, ``duration`` seconds, ``error``; ``None`` before the first) and
``sync_enabled``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from bridge import Bridge
from bridge.envelope import format_timestamp
from bridge.integrations.fastapi import bridge_router
from bridge.integrations.sync_status import tables_status
from bridge.observability.metrics import CONTENT_TYPE, BridgeMetrics
from services.shared.state import ServiceState

OPERATIONS_TAG = "operations"

_DOMAIN = text(
    """
    SELECT
      (SELECT count(*) FROM organizations WHERE deleted_at IS NULL) AS organizations,
      (SELECT count(*) FROM users WHERE deleted_at IS NULL) AS users,
      (SELECT max(processed_at) FROM bridge_inbox
         WHERE resource_type = 'organization' AND status = 'processed') AS last_org,
      (SELECT max(processed_at) FROM bridge_inbox
         WHERE resource_type = 'user' AND status = 'processed') AS last_user,
      (SELECT count(*) FROM sync_conflicts) AS conflicts,
      (SELECT count(*) FROM sync_stale_events) AS stale
    """
)


def operations_router(*, sync_enabled: bool) -> APIRouter:
    """The three operations routes: the library's over the bridge, or :func:`local_router`."""
    if sync_enabled:
        return bridge_router(sync_status=domain_sync_status, asyncapi=True, tags=[OPERATIONS_TAG])
    return local_router()


async def domain_sync_status(bridge: Bridge, document: dict[str, Any]) -> dict[str, Any]:
    """The bridge's ``/sync_status`` document with the domain's fields, in the seed's names."""
    async with AsyncSession(bridge.engine) as session:
        domain = (await session.execute(_DOMAIN)).mappings().one()
    return seed_document(domain, document, sync_enabled=True)


async def sync_status(state: ServiceState) -> dict[str, Any]:
    """``/sync_status`` without a bridge (sync off): the bridge's tables and the domain's."""
    async with state.session_factory() as session:
        domain = (await session.execute(_DOMAIN)).mappings().one()
    document = {
        "jetstream_connected": False,
        **await tables_status(state.engine),
        "dead_letters": None,
        "consumer": None,
    }
    return seed_document(domain, document, sync_enabled=False)


def seed_document(
    domain: Mapping[Any, Any], bridge: Mapping[str, Any], *, sync_enabled: bool
) -> dict[str, Any]:
    """The service's ``/sync_status`` (module doc) from the domain's counts and the
    bridge's document (:mod:`bridge.integrations.sync_status`)."""
    inbox, outbox = bridge["inbox"], bridge["outbox"]
    return {
        "organizations_count": domain["organizations"],
        "users_count": domain["users"],
        "last_organization_sync": _iso(domain["last_org"]),
        "last_user_sync": _iso(domain["last_user"]),
        "jetstream_connected": bool(bridge["jetstream_connected"]),
        "inbox_events_count": inbox["total"],
        "processed_events_count": inbox["processed"],
        "failed_events_count": inbox["failed"],
        "dead_lettered_events_count": inbox["dead_lettered"],
        "outbox": {
            key: outbox[key] for key in ("pending", "sent", "failed", "oldest_pending_age_seconds")
        },
        "dead_letters": bridge["dead_letters"],
        "conflicts": domain["conflicts"],
        "stale_events": domain["stale"],
        "consumer": bridge["consumer"],
        "reconciliation": bridge["reconciliation"],
        "sync_enabled": sync_enabled,
    }


def local_router() -> APIRouter:
    """``/health``, ``/metrics`` and ``/sync_status`` of a service with sync off, from
    ``app.state.service`` and ``app.state.metrics``."""
    router = APIRouter(tags=[OPERATIONS_TAG])

    @router.get("/health")
    async def health(request: Request) -> JSONResponse:
        """200 when the database is reachable, else 503 (sync is off: no NATS)."""
        state: ServiceState = request.app.state.service
        body = await state.health()
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    @router.get("/metrics", response_class=Response)
    async def metrics(request: Request) -> Response:
        """Prometheus text exposition (the table counts; bridge counters stay 0)."""
        exposition: BridgeMetrics = request.app.state.metrics
        return Response(content=await exposition.render(), media_type=CONTENT_TYPE)

    @router.get("/sync_status")
    async def get_sync_status(request: Request) -> dict[str, Any]:
        return await sync_status(request.app.state.service)

    return router


def _iso(value: datetime | None) -> str | None:
    return format_timestamp(value) if value is not None else None
