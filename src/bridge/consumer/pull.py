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

**Prefetch**: as soon as a fetch has returned messages, the next fetch is started
(one at a time, so batches still arrive in stream order), and the server sends the
next batch while this one is decoded and handed to a worker; the receive loop's
next ``_receive`` takes that fetch's result.  A prefetched batch holds deliveries
nobody is applying yet, as a full worker queue does: they count against the
consumer's ``max_ack_pending`` and are covered by ``ack_wait`` (the wait is about
one batch's processing).  On stop no fetch is started any more; one already under
way is awaited and its deliveries are applied before the workers stop
(:meth:`PullConsumer._has_received`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext

from bridge.consumer.base import BaseConsumer
from bridge.errors import EnvelopeError
from bridge.transport.delivery import Delivery, NatsDelivery


class PullConsumer(BaseConsumer):
    """Durable pull consumer (see module doc and :class:`BaseConsumer`)."""

    mode = "pull"
    #: start the next fetch while a batch is being decoded and handed out (module doc)
    prefetch = True
    _sub: JetStreamContext.PullSubscription | None = None
    _next: asyncio.Task[list[Msg]] | None = None

    async def _open(self) -> None:
        self._sub = await self._connection.js.pull_subscribe_bind(
            durable=self._config.subjects.durable, stream=self._config.stream_name
        )

    def _fetch(self, sub: JetStreamContext.PullSubscription) -> asyncio.Task[list[Msg]]:
        return asyncio.ensure_future(
            sub.fetch(self._batch_size, timeout=self._config.consumer.fetch_timeout)
        )

    async def _receive(self) -> Sequence[Delivery]:
        sub = self._sub
        assert sub is not None
        fetch, self._next = self._next, None
        if fetch is None or fetch.cancelled():
            fetch = self._fetch(sub)
        try:
            msgs = await fetch
        except (TimeoutError, NatsTimeoutError):
            return ()
        if msgs and self.prefetch and not self._stopping.is_set():
            self._next = self._fetch(sub)
        deliveries: list[Delivery] = []
        for msg in msgs:
            # A fetch only hands out JetStream deliveries; guard anyway so one odd
            # message cannot stop the loop (it is redelivered after ack_wait).
            with contextlib.suppress(EnvelopeError):
                deliveries.append(NatsDelivery(msg))
        return deliveries

    def _has_received(self) -> bool:
        # a fetch under way when stop began: its deliveries are applied, not left
        # to time out
        return self._next is not None

    async def _close(self) -> None:
        fetch, self._next = self._next, None
        if fetch is not None:  # only if the receive loop ended without taking it
            fetch.cancel()
            with contextlib.suppress(BaseException):
                await fetch
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
