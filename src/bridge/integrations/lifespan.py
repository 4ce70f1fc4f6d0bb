"""FastAPI lifespan in one line, composed with the application's own.

>>> app = FastAPI(lifespan=bridge_lifespan(lambda app: Bridge(config, engine=engine)))

The bridge is built when the app starts (so importing the app module connects to
nothing), started before the first request, stored in ``app.state.bridge`` (read it
typed with :func:`bridge.integrations.fastapi.get_bridge`), and stopped — consumer
drained, relay batch finished, connection drained — on shutdown.

``lifespan=``: the application's own lifespan runs *around* the bridge: its start-up
before the bridge is built (so ``make_bridge`` can use what it put in ``app.state``,
e.g. the engine), its shutdown after the bridge has stopped (so it may dispose what the
bridge used).  What it yields (``None`` or a lifespan state mapping) is what the
composed lifespan yields.

Logging: unless the application configured logging itself (the root logger has a
handler) or passes ``configure_logs=False``, start-up calls
:func:`bridge.observability.logs.ensure_logging` — one record per line, JSON when the
output is not a terminal — so the bridge's fields (event id, subject, deliveries,
exception and traceback) reach the output instead of Python's bare last-resort lines.

Framework-free at import (FastAPI only for type checking): ``import bridge`` stays
light.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

from bridge.observability.logs import ensure_logging

if TYPE_CHECKING:
    from fastapi import FastAPI

    from bridge.runtime import Bridge

#: An application's own lifespan: ``async with lifespan(app) as state: ...``.
AppLifespan = Callable[["FastAPI"], AbstractAsyncContextManager[Any]]


def bridge_lifespan(
    make_bridge: Callable[[FastAPI], Bridge],
    *,
    lifespan: AppLifespan | None = None,
    start_timeout: float = 30.0,
    stop_timeout: float = 10.0,
    configure_logs: bool = True,
    log_level: str | int = "INFO",
) -> Callable[[FastAPI], AbstractAsyncContextManager[Any]]:
    """Return a FastAPI ``lifespan`` that owns one :class:`~bridge.runtime.Bridge`,
    inside the application's own ``lifespan`` if given (module doc)."""

    @asynccontextmanager
    async def composed(app: FastAPI) -> AsyncIterator[Any]:
        if configure_logs:
            ensure_logging(level=log_level)
        if lifespan is None:
            async with _running(app, make_bridge, start_timeout, stop_timeout):
                yield None
            return
        async with (
            lifespan(app) as state,
            _running(app, make_bridge, start_timeout, stop_timeout),
        ):
            yield state

    return composed


@asynccontextmanager
async def _running(
    app: FastAPI, make_bridge: Callable[[FastAPI], Bridge], start_timeout: float,
    stop_timeout: float,
) -> AsyncIterator[Bridge]:  # fmt: skip
    bridge = make_bridge(app)
    app.state.bridge = bridge
    await bridge.start(timeout=start_timeout)
    try:
        yield bridge
    finally:
        await bridge.stop(timeout=stop_timeout)
