"""A worker process: the bridge — relay and consumer — without the HTTP API (the
seed's ``bin/consumer``), so web and workers scale separately.

    python -m services.system_a.worker        # same environment as the service

Web processes then run with ``ENABLE_CONSUMER=false`` (and/or ``ENABLE_RELAY=false``);
any number of workers may run: relays share the outbox safely and consumers share
the durable.  SIGTERM or SIGINT stops it gracefully: the consumer finishes and acks
its in-flight deliveries, the relay finishes its batch, the connection drains.

With ``METRICS_PORT`` set, the worker also serves ``GET /metrics``, ``/health`` and
``/sync_status`` on that port (:mod:`services.shared.operations_server`); it starts
after the bridge and stops before it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Callable, Mapping

from bridge.observability.logs import configure_logging
from services.shared.app import STOP_TIMEOUT, build_bridge, repository_for
from services.shared.db import make_engine
from services.shared.observability import service_metrics
from services.shared.operations_server import OperationsServer, operations_app
from services.shared.settings import ServiceSettings
from services.shared.state import ServiceState

log = logging.getLogger("bridge.services.worker")


async def run_worker(
    settings: ServiceSettings,
    stop: asyncio.Event,
    *,
    env: Mapping[str, str] | None = None,
    listening: Callable[[int], None] | None = None,
) -> None:
    """Run the bridge of ``settings`` until ``stop`` is set.

    ``env``: where the bridge's variables are read (default: the process environment,
    :func:`bridge.env.config_from_env`).  ``listening`` is told the operations
    endpoint's port once it listens (``METRICS_PORT`` set; port 0 picks a free one).
    """
    config = settings.to_bridge_config(env, enable_consumer=True, enable_relay=True)
    engine = make_engine(settings.database_url, pool_size=settings.db_pool_size)
    bridge = build_bridge(config, engine)
    operations: OperationsServer | None = None
    try:
        await bridge.start()
        if settings.metrics_port is not None:
            state = ServiceState(
                app_name=config.app_name,
                engine=engine,
                session_factory=bridge.session_factory,
                repository=repository_for(config),
                bridge=bridge,
            )
            app = operations_app(state, service_metrics(engine, bridge))
            operations = OperationsServer(app, host=settings.host, port=settings.metrics_port)
            await operations.start()
            if listening is not None and operations.port is not None:
                listening(operations.port)
        log.info("worker running", extra={"app": config.app_name})
        await stop.wait()
    finally:
        if operations is not None:
            await operations.stop(STOP_TIMEOUT)
        await bridge.stop(STOP_TIMEOUT)
        await engine.dispose()


def main(settings: ServiceSettings) -> int:
    """Console entry point: run until SIGTERM/SIGINT; exit 0 after a graceful stop."""
    configure_logging(level=settings.log_level)
    # Everything imported so far lives as long as the process: out of the cyclic
    # collector's sight, a full collection walks what the relay and consumers allocate,
    # not ~135 000 module objects (80 ms each, several per 30 000 events:
    # docs/OPERATIONS.md, "Tuning a worker process").
    gc.freeze()

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_worker(settings, stop)

    asyncio.run(run())
    return 0
