"""Pull consumer: ``fetch`` batches from the durable consumer and apply them.

Binds with ``js.pull_subscribe_bind(durable=..., stream=...)``, which makes no
``$JS.API`` management call, so it works for an app user that may only send
``$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>`` (restrictive mode).  Each
``fetch(batch_size, timeout=fetch_timeout)`` returns as soon as at least one
message is available (nats-py sends a ``no_wait`` + ``expires`` request, which
the server answers with what it has), so latency stays low under light traffic
while a busy stream is drained in full batches.  An empty fetch is a timeout,
not an error.  Ordering, workers, in-progress and stop are in
:mod:`bridge.consumer.base`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext

from bridge.consumer.base import BaseConsumer
from bridge.errors import EnvelopeError
from bridge.transport.delivery import Delivery, NatsDelivery


class PullConsumer(BaseConsumer):
    """Durable pull consumer (see module doc and :class:`BaseConsumer`)."""

    mode = "pull"
    _sub: JetStreamContext.PullSubscription | None = None

    async def _open(self) -> None:
        self._sub = await self._connection.js.pull_subscribe_bind(
            durable=self._config.subjects.durable, stream=self._config.stream_name
        )

    async def _receive(self) -> Sequence[Delivery]:
        sub = self._sub
        assert sub is not None
        try:
            msgs = await sub.fetch(self._batch_size, timeout=self._config.consumer.fetch_timeout)
        except (TimeoutError, NatsTimeoutError):
            return ()
        deliveries: list[Delivery] = []
        for msg in msgs:
            # A fetch only hands out JetStream deliveries; guard anyway so one odd
            # message cannot stop the loop (it is redelivered after ack_wait).
            with contextlib.suppress(EnvelopeError):
                deliveries.append(NatsDelivery(msg))
        return deliveries

    async def _close(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
