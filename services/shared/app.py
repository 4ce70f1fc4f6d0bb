"""``create_app(settings)``: the FastAPI application both systems run.

Building the app connects to nothing.  The lifespan creates the database engine,
builds the :class:`bridge.runtime.Bridge` (sync handlers registered on its
router) and starts it through :func:`bridge.integrations.fastapi.bridge_lifespan`
— NATS connection, provisioning or verification, outbox relay, consumer — and on
shutdown stops it (consumer drained, relay batch finished) before disposing the
engine.  Before anything else it gives the database its id system number
(``ID_SYSTEM_NUMBER``, :func:`services.shared.db.configure_identities`) and refuses to
start on a clash.  With ``sync_enabled=False`` the API runs on its database alone (plain
sessions; its connections turn the capture triggers off, ``bridge.capture = off``):
used to measure the outbox's cost and to run the API without NATS.

``GET /health``, ``/metrics`` and ``/sync_status``: the library's router over the bridge,
with the domain's fields on ``/sync_status`` (:mod:`services.shared.status`).  Request
tracing: :mod:`services.shared.observability` (``tracer_provider``: an OpenTelemetry
SDK provider; default the global one).  Logging: the bridge's lifespan configures it
(level ``LOG_LEVEL``) unless the process already did (a worker, a test run).
The operator console at ``/console``: :mod:`services.shared.console`.

Errors are JSON: ``{"error": "..."}`` with HTTP 404/409/422, and for 422 a
``details`` list of ``{"field", "location", "message", "type"}``.  Bad input never
produces a 500.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from opentelemetry.trace import TracerProvider
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from starlette.exceptions import HTTPException as StarletteHTTPException

from bridge import Bridge, BridgeConfig, EventSchemas, Router, bridge_lifespan
from bridge.integrations.console.options import ConsoleOptions
from bridge.reconcile.synced_models import load_synced_models
from services.shared.console import install_console
from services.shared.db import configure_identities, make_engine
from services.shared.errors import ServiceError
from services.shared.event_versions import event_schemas as domain_event_schemas
from services.shared.handlers import SyncHandlers
from services.shared.observability import install_observability, service_metrics
from services.shared.repository import Repository
from services.shared.routes import router as api_router
from services.shared.settings import ServiceSettings
from services.shared.state import ServiceState
from services.shared.status import operations_router

log = logging.getLogger("bridge.services.app")

#: The module declaring the services' synced models (``BRIDGE_MODELS`` for the CLI).
SYNCED_MODELS = "services.shared.models"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def build_bridge(
    config: BridgeConfig,
    engine: AsyncEngine,
    *,
    tracer_provider: TracerProvider | None = None,
    event_schemas: EventSchemas | None = None,
) -> Bridge:
    """The service's bridge: the domain's sync handlers on its router (web and worker),
    and its synced models (answers reconciliation requests, see :mod:`bridge.reconcile.reconciler`).

    ``event_schemas`` defaults to the domain's declared versions
    (:func:`services.shared.event_versions.event_schemas`).
    """
    router = Router()
    SyncHandlers(
        engine, config.app_name, clock=config.clock, max_clock_skew=config.max_clock_skew
    ).register(router)
    return Bridge(
        config,
        engine=engine,
        router=router,
        tracer_provider=tracer_provider,
        event_schemas=event_schemas if event_schemas is not None else domain_event_schemas(),
        synced_models=load_synced_models(SYNCED_MODELS),
    )


def repository_for(config: BridgeConfig) -> Repository:
    """The API's repository: the config's app name, clock and skew bound."""
    return Repository(
        config.app_name,
        clock=config.clock,
        max_clock_skew=config.max_clock_skew,
    )


def create_app(
    settings: ServiceSettings,
    *,
    bridge_config: BridgeConfig | None = None,
    tracer_provider: TracerProvider | None = None,
    event_schemas: EventSchemas | None = None,
    console_options: ConsoleOptions | None = None,
) -> FastAPI:
    """The service app for ``settings``; ``bridge_config`` replaces the one settings build,
    ``event_schemas`` the domain's declared event versions, ``console_options`` the
    console's (default: from the environment, ``BRIDGE_CONSOLE_TOKEN``)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(
            settings.database_url,
            pool_size=settings.db_pool_size,
            capture=settings.sync_enabled,
        )
        try:
            # Before any write: the database's id system number, and a working generator.
            await configure_identities(engine, settings.system_number())
            if not settings.sync_enabled:
                app.state.service = ServiceState(
                    app_name=settings.app_name,
                    engine=engine,
                    session_factory=async_sessionmaker(engine, expire_on_commit=False),
                    repository=Repository(settings.app_name),
                    bridge=None,
                )
                app.state.metrics = service_metrics(engine, None)
                yield
                return
            config = bridge_config or settings.to_bridge_config()
            bridge = build_bridge(
                config, engine, tracer_provider=tracer_provider, event_schemas=event_schemas
            )
            app.state.metrics = service_metrics(engine, bridge)
            app.state.service = ServiceState(
                app_name=config.app_name,
                engine=engine,
                session_factory=bridge.session_factory,
                repository=repository_for(config),
                bridge=bridge,
            )
            run_bridge = bridge_lifespan(
                lambda _app: bridge,
                start_timeout=START_TIMEOUT,
                stop_timeout=STOP_TIMEOUT,
                log_level=settings.log_level,
            )
            async with run_bridge(app):
                yield
        finally:
            await engine.dispose()

    app = FastAPI(
        title=f"{settings.app_name} (jetstream-bridge example)",
        description=(
            "Organizations and users, kept in sync with "
            f"{settings.destination_app} over NATS JetStream."
        ),
        version="0.1.0",
        lifespan=lifespan,
    )
    app.include_router(api_router)
    app.include_router(operations_router(sync_enabled=settings.sync_enabled))
    install_observability(app, tracer_provider=tracer_provider)
    install_console(app, console_options)  # /console (services.shared.console)
    _install_error_handlers(app)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [_detail(error) for error in exc.errors()]
        fields = ", ".join(sorted({d["field"] for d in details}))
        return JSONResponse(
            {"error": f"invalid input: {fields}", "details": details}, status_code=422
        )

    @app.exception_handler(ServiceError)
    async def _service_error(_request: Request, exc: ServiceError) -> JSONResponse:
        body: dict[str, Any] = {"error": exc.message}
        if exc.details is not None:
            body["details"] = exc.details
        return JSONResponse(body, status_code=exc.status_code)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
        )


def _detail(error: Any) -> dict[str, Any]:
    loc: Sequence[Any] = error.get("loc", ())
    location = str(loc[0]) if loc else "body"
    path = [str(part) for part in loc[1:]] if loc and loc[0] in ("body", "query", "path") else []
    return {
        "field": ".".join(path) or location,
        "location": location,
        "message": str(error.get("msg", "invalid")),
        "type": str(error.get("type", "value_error")),
    }
