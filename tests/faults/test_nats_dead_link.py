"""A NATS connection that goes dead without a FIN or an RST is noticed in bounded time.

Through a :class:`tcp_proxy.TcpProxy` in ``blackhole`` mode nothing arrives and
nothing closes: only the client's own PINGs can tell.  The bridge's connection must
report the loss within ``ping_interval * (max_outstanding_pings + 1)`` (with the
defaults, 5 s x 3 = 15 s; before these options existed it was hard-wired to 10 s x 4 =
40 s, measured 39.6 s) — and reconnect by itself once the link heals.
"""

from __future__ import annotations

import time

from fault_partition import start_proxy, wait_for

from bridge.config import BridgeConfig
from bridge.testing import NatsServer
from bridge.transport.connection import Connection, ConnectionState

PING = 0.5
OUTSTANDING = 2
BOUND = PING * (OUTSTANDING + 1)


async def test_a_blackholed_connection_is_noticed_within_the_ping_bound_and_replaced(
    nats_server: NatsServer,
) -> None:
    proxy = await start_proxy(nats_server.url)
    config = BridgeConfig(
        app_name="a",
        destination_app="b",
        nats_urls=(proxy.url(),),
        ping_interval=PING,
        max_outstanding_pings=OUTSTANDING,
        reconnect_wait=0.1,
        connect_timeout=0.5,
    )
    connection = Connection(config)
    await connection.start(timeout=10)
    try:
        await connection.nc.flush(timeout=2)  # a PONG just arrived: the count starts at 0
        proxy.blackhole()
        started = time.monotonic()
        await wait_for(
            lambda: connection.state != ConnectionState.CONNECTED, BOUND + 5, "dead link noticed"
        )
        noticed = time.monotonic() - started
        assert PING * OUTSTANDING - 0.2 <= noticed <= BOUND + 1.0, noticed

        proxy.pass_through()
        await wait_for(lambda: connection.state == ConnectionState.CONNECTED, 10, "reconnected")
        assert connection.reconnects == 1
        await connection.nc.flush(timeout=2)
    finally:
        await connection.stop(2)
        await proxy.stop()
