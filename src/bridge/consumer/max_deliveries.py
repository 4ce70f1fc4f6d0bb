"""A safety net for a consumer still provisioned with a finite server-side ``max_deliver``.

A message whose last attempt never finished (process killed mid-handler) is
settled by the consumer itself: the server redelivers without limit and the
delivery after the last attempt is dead-lettered at once (the reserved delivery,
:func:`bridge.routing.outcomes.decide_exhausted`), which needs no permission beyond the
app's own.  A consumer provisioned with a finite limit (drift, e.g. created by an
older version before ``bridge-provision apply`` updated it) makes the server give
up instead and publish a ``MAX_DELIVERIES`` advisory: :class:`MaxDeliveriesWatcher`
reads that message by stream sequence and dead-letters it as
``max_deliver_exceeded`` unless the inbox says it was already processed or
dead-lettered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any, Protocol

from nats.aio.client import Client
from nats.aio.subscription import Subscription

from bridge.config import BridgeConfig
from bridge.routing.dlq import DeadLetters
from bridge.routing.outcomes import REASON_MAX_DELIVER
from bridge.transport.delivery import Received

log = logging.getLogger("bridge.dlq")


class AbandonedSink(Protocol):
    """What the watcher asks the inbox (implemented by InboxProcessor)."""

    async def settled(self, data: bytes) -> bool:
        """True when the event in ``data`` was already processed or dead-lettered."""
        ...

    async def mark_dead_lettered(self, message: Received, reason: str) -> None: ...


class MaxDeliveriesWatcher:
    """Dead-letter messages the server stopped redelivering (``MAX_DELIVERIES`` advisory).

    Only a consumer with a finite server-side ``max_deliver`` (drift; see the
    module doc) ever stops redelivering; the bridge provisions an unlimited one.
    Needs subscribe permission on the advisory and the stream's direct get, so it
    runs only where the app manages JetStream (:class:`bridge.consumer.base.BaseConsumer`).
    Subscribes with the durable name as queue group, so one replica handles each
    advisory.  Failures are logged and left: the message stays in the stream
    (and the dead-letter publish is idempotent), so nothing is lost.
    """

    def __init__(
        self,
        config: BridgeConfig,
        nc: Client,
        dead_letters: DeadLetters,
        sink: AbandonedSink | None = None,
    ) -> None:
        self._config = config
        self._nc = nc
        self._dead_letters = dead_letters
        self._sink = sink
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self.captured = 0
        self.subject = (
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES."
            f"{config.stream_name}.{config.subjects.durable}"
        )

    async def start(self) -> None:
        if self._task is not None:
            return
        self._sub = await self._nc.subscribe(self.subject, queue=self._config.subjects.durable)
        self._task = asyncio.create_task(self._run(self._sub), name="bridge-dlq-advisories")

    async def stop(self, timeout: float = 5.0) -> None:
        sub, task = self._sub, self._task
        self._sub = self._task = None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if task is not None:
            try:
                await asyncio.wait_for(task, timeout)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _run(self, sub: Subscription) -> None:
        async for msg in sub.messages:
            try:
                await self.handle(json.loads(msg.data))
            except Exception as exc:  # keep watching; the message stays in the stream
                log.error(
                    "could not dead-letter an abandoned message",
                    extra={"advisory": msg.data[:500].decode(errors="replace"), "error": repr(exc)},
                )

    async def handle(self, advisory: dict[str, Any]) -> bool:
        """Dead-letter the message an advisory names; return False when it was settled."""
        message = await self._dead_letters.read(
            str(advisory["stream"]),
            int(advisory["stream_seq"]),
            deliveries=int(advisory.get("deliveries", 0)),
        )
        if self._sink is not None and await self._sink.settled(message.data):
            log.info("abandoned message already settled", extra={"stream_seq": message.stream_seq})
            return False
        await self._dead_letters.publish(message, reason=REASON_MAX_DELIVER, error=None)
        if self._sink is not None:
            await self._sink.mark_dead_lettered(message, REASON_MAX_DELIVER)
        self.captured += 1
        return True
