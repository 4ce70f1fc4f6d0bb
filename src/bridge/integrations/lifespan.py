"""FastAPI lifespan in one line.

>>> app = FastAPI(lifespan=bridge_lifespan(lambda app: Bridge(config, engine=engine)))

The bridge is built when the app starts (so importing the app module connects to
nothing), started before the first request, stored in ``app.state.bridge``, and
stopped — consumer drained, relay batch finished, connection drained — on shutdown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

    from bridge.runtime import Bridge


def bridge_lifespan(
    make_bridge: Callable[[FastAPI], Bridge],
    *,
    start_timeout: float = 30.0,
    stop_timeout: float = 10.0,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Return a FastAPI ``lifespan`` that owns one :class:`~bridge.runtime.Bridge`."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        bridge = make_bridge(app)
        app.state.bridge = bridge
        await bridge.start(timeout=start_timeout)
        try:
            yield
        finally:
            await bridge.stop(timeout=stop_timeout)

    return lifespan
