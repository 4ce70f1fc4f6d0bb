"""The operations endpoint of a worker process: ``GET /metrics``, ``/health`` and
``/sync_status`` on their own port, without the domain API.

A worker (:mod:`services.shared.worker`) runs the relay and the consumer but no web
app, so without this Prometheus could not scrape the figures that matter most for
it (deliveries, dead letters, relay lag).  The routes are the web app's own
(:mod:`services.shared.status`: the library's router over the worker's bridge), mounted
on a small FastAPI app served by uvicorn inside the worker's event loop.

Lifecycle: :meth:`OperationsServer.start` returns once the socket listens (the
bound port is in :attr:`OperationsServer.port`; port 0 picks a free one);
:meth:`OperationsServer.stop` closes it within ``timeout`` and awaits its task.
Signals stay the worker's: uvicorn's own SIGINT/SIGTERM capture is disabled, so a
SIGTERM still runs the worker's graceful stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Generator

import uvicorn
from fastapi import FastAPI

from bridge.observability.metrics import BridgeMetrics
from services.shared.state import ServiceState
from services.shared.status import operations_router

log = logging.getLogger("bridge.services.operations")

START_TIMEOUT = 10.0


def operations_app(state: ServiceState, metrics: BridgeMetrics) -> FastAPI:
    """``/metrics``, ``/health`` and ``/sync_status`` of ``state`` — nothing else."""
    app = FastAPI(title=f"{state.app_name} worker (operations)")
    app.state.service = state
    app.state.metrics = metrics
    app.state.bridge = state.bridge  # what the library's router reads
    app.include_router(operations_router(sync_enabled=state.bridge is not None))
    return app


class _Server(uvicorn.Server):
    """uvicorn without its signal capture (the worker owns SIGINT/SIGTERM)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class OperationsServer:
    """Serves :func:`operations_app` on ``host:port`` until :meth:`stop`."""

    def __init__(self, app: FastAPI, *, host: str, port: int) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_config=None, lifespan="off")
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None
        self.port: int | None = None

    async def start(self) -> None:
        """Listen; raise :class:`RuntimeError` if the socket could not be bound."""
        self._task = asyncio.create_task(self._server.serve(), name="operations-server")
        async with asyncio.timeout(START_TIMEOUT):
            while not self._server.started:
                if self._task.done():
                    await self._task  # re-raises a bind error
                    raise RuntimeError("operations server exited during start-up")
                await asyncio.sleep(0.01)
        sockets = [s for server in self._server.servers for s in server.sockets]
        self.port = int(sockets[0].getsockname()[1])
        log.info("operations endpoint listening", extra={"port": self.port})

    async def stop(self, timeout: float) -> None:
        """Stop accepting, finish open requests within ``timeout``, end the task."""
        task, self._task = self._task, None
        if task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(task, timeout)
        except TimeoutError:
            self._server.force_exit = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
