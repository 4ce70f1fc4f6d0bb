"""A worker process: the bridge — relay and consumer — without the HTTP API (the
seed's ``bin/consumer``), so web and workers scale separately.

    python -m services.system_a.worker        # same environment as the service

Web processes then run with ``ENABLE_CONSUMER=false`` (and/or ``ENABLE_RELAY=false``);
any number of workers may run: relays share the outbox safely and consumers share
the durable.  SIGTERM or SIGINT stops it gracefully: the consumer finishes and acks
its in-flight deliveries, the relay finishes its batch, the connection drains.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from bridge.logs import configure_logging
from services.shared.app import STOP_TIMEOUT, build_bridge
from services.shared.db import make_engine
from services.shared.settings import ServiceSettings

log = logging.getLogger("bridge.services.worker")


async def run_worker(settings: ServiceSettings, stop: asyncio.Event) -> None:
    """Run the bridge of ``settings`` until ``stop`` is set."""
    config = settings.to_bridge_config(enable_consumer=True, enable_relay=True)
    engine = make_engine(settings.database_url, pool_size=settings.db_pool_size)
    bridge = build_bridge(config, engine)
    try:
        await bridge.start()
        log.info("worker running", extra={"app": config.app_name})
        await stop.wait()
    finally:
        await bridge.stop(STOP_TIMEOUT)
        await engine.dispose()


def main(settings: ServiceSettings) -> int:
    """Console entry point: run until SIGTERM/SIGINT; exit 0 after a graceful stop."""
    configure_logging(level=settings.log_level)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_worker(settings, stop)

    asyncio.run(run())
    return 0
