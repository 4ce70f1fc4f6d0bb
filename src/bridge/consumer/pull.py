"""Pull consumer: fetch batches from the durable consumer and apply them.

Fetches with :class:`~bridge.transport.pull_requests.BatchPuller`: pull requests on
``$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>`` answered to an inbox of the app's
connection, and no ``$JS.API`` management call, so it works for an app user that may
only send those (restrictive mode).  Each fetch (``batch_size``, ``fetch_timeout``)
returns as soon as at least one message is available (the server answers a
``no_wait`` + ``expires`` request with what it has), so latency stays low under light
traffic while a busy stream is drained in full batches.  An empty fetch is a timeout,
not an error.  Ordering, workers, in-progress and stop are in
:mod:`bridge.consumer.base`.

**Prefetch**: as soon as a fetch has returned messages, the next fetch is started
(one at a time, so batches still arrive in stream order), and the server sends the
next batch while this one is decoded and handed to a worker; the receive loop's
next ``_receive`` takes that fetch's result.  A prefetched batch holds deliveries
nobody is applying yet, as a full worker queue does: they count against the
consumer's ``max_ack_pending`` and are covered by ``ack_wait`` (the wait is about
one batch's processing).  On stop no fetch is started any more; one already under
way, and whatever the puller still holds, is applied before the workers stop
(:meth:`PullConsumer._has_received`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from nats.aio.msg import Msg

from bridge.consumer.base import BaseConsumer
from bridge.errors import EnvelopeError
from bridge.provisioning.permissions import msg_next_subject
from bridge.transport.delivery import Delivery, NatsDelivery
from bridge.transport.pull_requests import BatchPuller


class PullConsumer(BaseConsumer):
    """Durable pull consumer (see module doc and :class:`BaseConsumer`)."""

    mode = "pull"
    #: start the next fetch while a batch is being decoded and handed out (module doc)
    prefetch = True
    _puller: BatchPuller | None = None
    _next: asyncio.Task[list[Msg]] | None = None

    async def _open(self) -> None:
        puller = BatchPuller(self._connection.nc, msg_next_subject(self._config))
        await puller.start()
        self._puller = puller

    def _fetch(self, puller: BatchPuller) -> asyncio.Task[list[Msg]]:
        return asyncio.ensure_future(
            puller.fetch(self._batch_size, timeout=self._config.consumer.fetch_timeout)
        )

    async def _receive(self) -> Sequence[Delivery]:
        puller = self._puller
        assert puller is not None
        fetch, self._next = self._next, None
        if fetch is None or fetch.cancelled():
            fetch = self._fetch(puller)
        msgs = await fetch
        if msgs and self.prefetch and not self._stopping.is_set():
            self._next = self._fetch(puller)
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
        return self._next is not None or (self._puller is not None and self._puller.holding > 0)

    async def _close(self) -> None:
        fetch, self._next = self._next, None
        if fetch is not None:  # only if the receive loop ended without taking it
            fetch.cancel()
            with contextlib.suppress(BaseException):
                await fetch
        puller, self._puller = self._puller, None
        if puller is not None:
            await puller.stop()
