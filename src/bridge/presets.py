"""Named presets: a complete :class:`~bridge.config.BridgeConfig` for a situation.

``preset("test", app_name="a", destination_app="b")``: the preset's values, then the
overrides (any option; validated like any config).

- ``development``: provisions at start, waits 30 s for acks.
- ``test``: fast — 5 s ack wait, backoff 0.1 s / 0.2 s / 0.5 s, 3 deliveries, relay
  polling every 0.2 s with a 5 s lease.
- ``production``: verifies only (an operator provisions), a 3-replica stream.
- ``high_throughput``: relay batches of 1000, consumer batches of 256 on 8 workers.
- ``maximum_reliability``: verifies only, 3 replicas, 10 deliveries with backoff up to
  5 min, a 10-minute duplicate window, 100 relay attempts.
"""

from __future__ import annotations

from typing import Any

from bridge.config import BridgeConfig, ConsumerOptions, RelayOptions
from bridge.errors import ConfigError

PRESETS: dict[str, dict[str, Any]] = {
    "development": {"auto_provision": True, "ack_wait": 30.0},
    "test": {
        "auto_provision": True,
        "ack_wait": 5.0,
        "backoff": (0.1, 0.2, 0.5),
        "max_deliver": 3,
        "duplicate_window": 30.0,
        "relay": RelayOptions(poll_interval=0.2, lease=5.0, retry_base=0.05, retry_max=0.5),
        "consumer": ConsumerOptions(fetch_timeout=0.5),
    },
    "production": {"auto_provision": False, "stream_replicas": 3, "ack_wait": 30.0},
    "high_throughput": {
        "relay": RelayOptions(batch_size=1000, max_in_flight=1024),
        "consumer": ConsumerOptions(batch_size=256, concurrency=8),
        "ack_wait": 60.0,
    },
    "maximum_reliability": {
        "auto_provision": False,
        "stream_replicas": 3,
        "max_deliver": 10,
        "backoff": (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0),
        "duplicate_window": 600.0,
        "relay": RelayOptions(max_attempts=100),
    },
}


def preset(name: str, **overrides: Any) -> BridgeConfig:
    """Build a config from a named preset plus overrides (``app_name`` etc.)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return BridgeConfig(**{**PRESETS[name], **overrides})
