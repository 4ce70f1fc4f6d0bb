"""FastAPI: the bridge's operations routes in one line, and ``app.state.bridge`` typed.

>>> app = FastAPI(lifespan=bridge_lifespan(lambda app: Bridge(config, engine=engine)))
>>> app.include_router(bridge_router())          # GET /health, /metrics, /sync_status

- :func:`get_bridge` is the typed accessor of the bridge :func:`bridge_lifespan` keeps in
  ``app.state.bridge`` — a FastAPI dependency: ``bridge: BridgeDep`` (that is
  ``Annotated[Bridge, Depends(get_bridge)]``) in a route's parameters.
- :func:`bridge_router` serves what any application needs from the bridge alone:
  ``GET /health`` (:meth:`bridge.runtime.Bridge.health`; 503 when degraded — NATS or the
  database down, a consumer task dead or crash-looping), ``GET /metrics`` (the bridge's
  Prometheus registry, with every source added to ``bridge.metrics``) and
  ``GET /sync_status`` (:mod:`bridge.integrations.sync_status`).  An application adds its
  own fields to ``/sync_status`` with ``sync_status=`` (a function of the bridge and the
  document), serves the routes under a ``prefix``, or leaves some out.  Routes beyond
  these three are keyword switches of the same function, each off unless asked for:
  ``asyncapi=True`` adds ``GET /asyncapi.json``, the app's event catalog
  (:func:`bridge.catalog.asyncapi` of the bridge's config and event schemas).

This module imports FastAPI (the ``fastapi`` extra: ``pip install
jetstream-bridge[fastapi]``); ``import bridge`` does not.
"""

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.applications import Starlette

from bridge.catalog import asyncapi as event_catalog
from bridge.errors import BridgeError
from bridge.integrations.lifespan import bridge_lifespan
from bridge.integrations.sync_status import sync_status as bridge_sync_status
from bridge.observability.metrics import CONTENT_TYPE
from bridge.runtime import Bridge

__all__ = ["BridgeDep", "StatusExtension", "bridge_lifespan", "bridge_of", "bridge_router",
           "get_bridge"]  # fmt: skip

#: ``async def extend(bridge, document) -> document``: an application's own fields on
#: ``/sync_status``.
StatusExtension = Callable[[Bridge, dict[str, Any]], Awaitable[dict[str, Any]]]


def bridge_of(app: FastAPI | Starlette) -> Bridge:
    """The bridge :func:`bridge_lifespan` stored in ``app.state.bridge``; a
    :class:`~bridge.errors.BridgeError` saying what to do when there is none."""
    bridge = getattr(app.state, "bridge", None)
    if not isinstance(bridge, Bridge):
        raise BridgeError(
            "no Bridge in app.state.bridge: create the app with "
            "FastAPI(lifespan=bridge_lifespan(...)) (or set app.state.bridge yourself)"
        )
    return bridge


def get_bridge(request: Request) -> Bridge:
    """The running app's bridge, typed — a FastAPI dependency (``BridgeDep``)."""
    return bridge_of(request.app)


#: A route parameter ``bridge: BridgeDep`` receives the app's :class:`Bridge`.
BridgeDep = Annotated[Bridge, Depends(get_bridge)]


def bridge_router(
    bridge: Bridge | Callable[[Request], Bridge] = get_bridge,
    *,
    health: bool = True,
    metrics: bool = True,
    sync_status: bool | StatusExtension = True,
    asyncapi: bool = False,
    prefix: str = "",
    tags: list[str] | None = None,
) -> APIRouter:
    """``/health``, ``/metrics``, ``/sync_status`` (and ``/asyncapi.json``) of a bridge
    (module doc).

    ``bridge``: the bridge itself, or a dependency returning it (default
    :func:`get_bridge`: the app's ``app.state.bridge``).  ``sync_status``: ``False``
    leaves the route out, a function adds the application's fields to the document.
    """
    getter = bridge if callable(bridge) and not isinstance(bridge, Bridge) else _fixed(bridge)
    Running = Annotated[Bridge, Depends(getter)]
    router = APIRouter(prefix=prefix, tags=list(tags or ["bridge"]))

    if health:

        @router.get("/health", summary="Liveness of NATS, the database, relay and consumer")
        async def bridge_health(running: Running) -> JSONResponse:
            """200 when NATS and the database are reachable and the consumer's tasks
            are alive; 503 (with what is down) otherwise."""
            body = await running.health()
            return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    if metrics:

        @router.get("/metrics", response_class=Response, summary="Prometheus metrics")
        async def bridge_metrics(running: Running) -> Response:
            """The bridge's Prometheus text exposition."""
            return Response(content=await running.metrics.render(), media_type=CONTENT_TYPE)

    if sync_status is not False:
        extend = sync_status if callable(sync_status) else None

        @router.get("/sync_status", summary="Outbox, inbox, dead letters, consumer lag")
        async def bridge_status(running: Running) -> dict[str, Any]:
            """The sync status document (:mod:`bridge.integrations.sync_status`)."""
            document = await bridge_sync_status(running)
            return document if extend is None else await extend(running, document)

    if asyncapi:

        @router.get("/asyncapi.json", summary="Event catalog (AsyncAPI 3.0.0)")
        async def bridge_asyncapi(running: Running) -> JSONResponse:
            """The events this app publishes and accepts, their payload schemas and
            headers, and its dead letters (:mod:`bridge.catalog.document`)."""
            return JSONResponse(event_catalog(running.config, running.event_schemas))

    return router


def _fixed(bridge: Any) -> Callable[[Request], Bridge]:
    if not isinstance(bridge, Bridge):
        raise BridgeError(f"bridge_router needs a Bridge or a dependency, got {bridge!r}")

    def fixed(request: Request) -> Bridge:
        return bridge

    return fixed
