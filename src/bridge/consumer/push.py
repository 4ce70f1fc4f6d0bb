"""Push consumer: a plain queue subscription on the deliver subject.

Subscribes with ``nc.subscribe(deliver_subject, queue=deliver_group)`` — not
``js.subscribe``, which calls ``$JS.API`` — so an app user needs only subscribe
permission on the deliver subject, publish on ``$JS.ACK.>`` for acks and on
``$JS.FC.>`` for flow-control replies (plus its own subjects to publish).

JetStream status messages (``Status: 100``, empty body) are handled here: a
``FlowControl Request`` (it has a reply subject, ``$JS.FC...``) is answered with
an empty message; an ``Idle Heartbeat`` (no reply subject) is ignored unless it
carries ``Nats-Consumer-Stalled``, whose value is the flow-control reply to
answer.  Deliveries carry the ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>...``
reply subject that gives stream sequence and delivery count.

Received deliveries are queued and applied in batches of up to ``batch_size``
(whatever is queued when a worker is ready).  The server's ``max_ack_pending``
bounds how many can be queued.  On stop the subscription is removed first, then
queued deliveries are applied; anything the server sent after that is
redelivered after ``ack_wait``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from bridge.consumer.base import BaseConsumer
from bridge.errors import EnvelopeError
from bridge.transport.delivery import Delivery, NatsDelivery

log = logging.getLogger("bridge.consumer")

STATUS_HEADER = "Status"
STALLED_HEADER = "Nats-Consumer-Stalled"
CONTROL_STATUS = "100"


class PushConsumer(BaseConsumer):
    """Durable push consumer in a queue group (see module doc and :class:`BaseConsumer`)."""

    mode = "push"
    _sub: Subscription | None = None
    _intake: asyncio.Queue[Delivery]
    flow_control_replies = 0
    heartbeats = 0

    async def _open(self) -> None:
        self._intake = asyncio.Queue()
        self._sub = await self._connection.nc.subscribe(
            self._config.deliver_subject, queue=self._config.deliver_group, cb=self._on_msg
        )

    async def _on_msg(self, msg: Msg) -> None:
        headers = msg.headers
        if headers and headers.get(STATUS_HEADER) == CONTROL_STATUS and not msg.data:
            await self._on_control(msg, headers)
            return
        try:
            delivery = NatsDelivery(msg)
        except EnvelopeError as exc:  # published straight to the deliver subject
            log.warning("ignoring a non-JetStream message", extra={"error": str(exc)})
            return
        self._intake.put_nowait(delivery)

    async def _on_control(self, msg: Msg, headers: dict[str, str]) -> None:
        # A flow-control request carries a reply subject; an idle heartbeat has none
        # but names the pending flow-control reply when the consumer is stalled.
        if msg.reply:
            reply: str | None = msg.reply
        else:
            self.heartbeats += 1
            reply = headers.get(STALLED_HEADER)
        if reply:
            self.flow_control_replies += 1
            with contextlib.suppress(Exception):  # the server asks again if this is lost
                await self._connection.nc.publish(reply, b"")

    async def _receive(self) -> Sequence[Delivery]:
        try:
            first = await asyncio.wait_for(
                self._intake.get(), timeout=self._config.consumer.fetch_timeout
            )
        except TimeoutError:
            return ()
        batch = [first]
        while len(batch) < self._batch_size and not self._intake.empty():
            batch.append(self._intake.get_nowait())
        return batch

    async def _close_intake(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def _has_received(self) -> bool:
        # what already arrived is applied before the workers stop
        return not self._intake.empty()
