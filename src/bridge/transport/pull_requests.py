"""Pull requests over core NATS: fetch batches of a durable pull consumer.

What nats-py's ``PullSubscription.fetch`` does, with the messages taken off a
callback subscription instead of one ``next_msg`` per message (each of those is a
``uuid4()``, a task and an ``asyncio.wait_for``: about 30 us of CPU per message, more
than everything else a raw fetch + ack costs together).  Only public client calls:
``subscribe`` on a fresh inbox of the connection (``<inbox>.*``, under the app's
inbox prefix) and ``publish`` of the pull request to
``$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>`` — no ``$JS.API`` management call,
so a least-privilege app user can fetch (:func:`bridge.provisioning.permissions.msg_next_subject`).

Contract of :meth:`BatchPuller.fetch` (``batch``, ``timeout``):

- Deliveries already received (from an earlier request, e.g. one that answered after
  its fetch had given up) are handed out first, in arrival order, which is the
  consumer's delivery order: requests go out one at a time.
- Otherwise ONE request ``{"batch": n, "expires": timeout, "no_wait": true}`` with a
  reply subject of its own (``<inbox>.<n>``).  The server waits up to ``expires`` for
  a first message, sends what it has up to ``n``, and ends a short batch with a
  ``404 No Messages`` status (``408 Request Timeout`` when nothing came): the fetch
  returns as soon as the batch is full or its request has ended, so light traffic
  is applied at once and a busy stream is drained in full batches.
- Status messages of an earlier request are ignored; a heartbeat too.  Any other
  status ending this request (``409`` consumer deleted / leadership change / limits,
  ``503`` no JetStream) raises :class:`PullError` when nothing was received, else the
  deliveries are returned and the next request meets the condition again.
- Nothing answering within ``timeout`` (plus a margin: the server expires the request
  first) returns what was received, possibly nothing: after a reconnect the request
  may be lost, and the next fetch sends a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

#: the server expires a request this much before the client stops waiting for it
EXPIRES_MARGIN = 0.05
STATUS_HEADER = "Status"
DESCRIPTION_HEADER = "Description"
#: statuses that end a request normally: a short batch, an expired request
_ENDED = ("404", "408")
_HEARTBEAT = "100"


class PullError(Exception):
    """The server refused a pull request (a status other than no messages/timeout)."""


class BatchPuller:
    """Fetches batches of one durable pull consumer (module doc); one fetch at a time."""

    def __init__(self, nc: Client, request_subject: str) -> None:
        self._nc = nc
        self._request_subject = request_subject
        self._inbox = ""
        self._sub: Subscription | None = None
        self._received: deque[Msg] = deque()
        self._arrived = asyncio.Event()
        self._requests = 0
        self._ended: dict[str, str] = {}  # reply subject -> status that ended it

    async def start(self) -> None:
        """Subscribe to the reply inbox (idempotent)."""
        if self._sub is None:
            self._inbox = self._nc.new_inbox()
            self._sub = await self._nc.subscribe(f"{self._inbox}.*", cb=self._on_message)

    async def stop(self) -> None:
        """Unsubscribe; deliveries still held are dropped (redelivered after ack_wait)."""
        sub, self._sub = self._sub, None
        self._received.clear()
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    @property
    def holding(self) -> int:
        """Deliveries received and not handed out yet."""
        return len(self._received)

    async def _on_message(self, msg: Msg) -> None:
        headers = msg.headers
        status = headers.get(STATUS_HEADER) if headers and not msg.reply else None
        if status is None:
            self._received.append(msg)
        elif status != _HEARTBEAT:
            description = headers.get(DESCRIPTION_HEADER, "") if headers else ""
            self._ended[msg.subject] = f"{status} {description}".strip()
        self._arrived.set()

    async def fetch(self, batch: int, timeout: float) -> list[Msg]:
        """Up to ``batch`` deliveries, waiting at most about ``timeout`` (module doc)."""
        if self._sub is None:
            raise PullError("not started")
        msgs = self._take(batch)
        if msgs:
            return msgs
        self._requests += 1
        reply = f"{self._inbox}.{self._requests}"
        self._ended.clear()  # statuses of earlier requests: nothing waits for them
        request = {
            "batch": batch,
            "expires": max(int((timeout - EXPIRES_MARGIN) * 1e9), 1_000_000),
            "no_wait": True,
        }
        await self._nc.publish(self._request_subject, json.dumps(request).encode(), reply=reply)
        deadline = time.monotonic() + timeout
        while True:
            msgs += self._take(batch - len(msgs))
            # one connection, one subscription: a request's messages arrive before the
            # status that ends it, so once it is here nothing more of it will come
            if len(msgs) >= batch or reply in self._ended:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                return msgs  # no answer: lost with a reconnect, or a busy server
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left)
        ended = self._ended.pop(reply, None)
        if ended is not None and not msgs and ended[:3] not in _ENDED:
            raise PullError(f"pull request refused: {ended}")
        return msgs

    def _take(self, n: int) -> list[Msg]:
        received = self._received
        if len(received) <= n:
            taken = list(received)
            received.clear()
            return taken
        return [received.popleft() for _ in range(n)]
