"""jetstream-bridge: keep services' databases in sync over NATS JetStream.

What an application needs, in one import::

    from bridge import Bridge, Router, Synced, configure_bidirectional

- **Configure**: :class:`BridgeConfig` (frozen, validated at construction; options
  :class:`RelayOptions`, :class:`ConsumerOptions`, :class:`ReconcileOptions`,
  :class:`Credentials`), :func:`configure_bidirectional` (one side of a pair, like the
  Ruby gem), :func:`config_from_env` (from environment variables), :func:`preset`.
- **Capture**: models inherit :class:`Synced`; a trigger on their tables writes every
  change, whatever made it, to the outbox in the same transaction
  (:mod:`bridge.migrations` installs it).  :func:`skip_publish` suppresses it.
- **Apply**: a :class:`Router` maps event and resource types to handlers, which get
  each event as an :class:`Envelope` (the wire contract) and raise
  :class:`Retry` or :class:`Reject` to choose an outcome; :meth:`Router.use` adds
  middleware (:class:`HandlerCall`).  :class:`LastWriterWins` applies incoming row
  versions of a :class:`SyncedTable`; :func:`check_version_time` bounds a version.
- **Run**: :class:`Bridge` (``start()``, ``stop(timeout)``, ``async with``); with
  FastAPI, :func:`bridge_lifespan` (and, with the ``fastapi`` extra,
  ``bridge.integrations.fastapi``: ``bridge_router()`` for ``/health``, ``/metrics``,
  ``/sync_status`` and the typed ``get_bridge`` dependency).  :class:`EventSchemas`
  declares payload versions.
- **Errors**: every error the library raises is a :class:`BridgeError`;
  :class:`ConfigError` at construction.

Everything else is reachable by its stage package (``bridge.outbox``, ``bridge.inbox``,
... — docs/ARCHITECTURE.md).  Importing this package has no side effects: no
connections, no threads, no module-level state.
"""

from bridge.config import (
    BridgeConfig,
    ConsumerOptions,
    Credentials,
    ReconcileOptions,
    RelayOptions,
)
from bridge.env import config_from_env, configure_bidirectional
from bridge.envelope import Envelope
from bridge.errors import BridgeError, ConfigError, Reject, Retry
from bridge.event_schemas import EventSchemas
from bridge.integrations.lifespan import bridge_lifespan
from bridge.outbox.capture import Synced, skip_publish
from bridge.presets import preset
from bridge.routing.middleware import HandlerCall
from bridge.routing.router import Router
from bridge.routing.version_time import check_version_time
from bridge.runtime import Bridge
from bridge.sync.lww import LastWriterWins, SyncedTable

__all__ = [
    "Bridge",
    "BridgeConfig",
    "BridgeError",
    "ConfigError",
    "ConsumerOptions",
    "Credentials",
    "Envelope",
    "EventSchemas",
    "HandlerCall",
    "LastWriterWins",
    "ReconcileOptions",
    "Reject",
    "RelayOptions",
    "Retry",
    "Router",
    "Synced",
    "SyncedTable",
    "bridge_lifespan",
    "check_version_time",
    "config_from_env",
    "configure_bidirectional",
    "preset",
    "skip_publish",
]
__version__ = "0.1.0"
