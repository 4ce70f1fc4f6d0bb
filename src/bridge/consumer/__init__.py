"""Consumers: pull (``fetch``) and push (deliver subject), chosen by ``consumer_mode``.

Both apply deliveries through :class:`~bridge.inbox.processor.InboxProcessor` (inbox +
router + dead letters) and share workers, per-resource ordering, in-progress
keep-alives, stats and ``start()`` / ``stop(timeout)`` (:mod:`bridge.consumer.base`).
"""

from __future__ import annotations

from bridge.config import BridgeConfig
from bridge.consumer.base import BaseConsumer, ConsumerStats
from bridge.consumer.pull import PullConsumer
from bridge.consumer.push import PushConsumer
from bridge.inbox.processor import InboxProcessor
from bridge.transport.connection import Connection

__all__ = ["BaseConsumer", "ConsumerStats", "PullConsumer", "PushConsumer", "make_consumer"]


def make_consumer(
    config: BridgeConfig,
    connection: Connection,
    processor: InboxProcessor,
    *,
    watch_max_deliveries: bool | None = None,
) -> PullConsumer | PushConsumer:
    """The consumer for ``config.consumer_mode`` (not started)."""
    cls = PushConsumer if config.consumer_mode == "push" else PullConsumer
    return cls(config, connection, processor, watch_max_deliveries=watch_max_deliveries)
