"""Health and ``/sync_status`` of one :class:`~bridge.runtime.Bridge`, read on demand.

- :meth:`BridgeStatus.health`: NATS, the database, the relay and the consumer;
  ``degraded`` (``/health`` answers 503) when NATS or the database is down, or a
  consumer task is dead or crash-looping (``consumer.problems`` says which and how).
- :meth:`BridgeStatus.status`: outbox, inbox, dead letters and consumer lag counts
  (the gauges of :class:`~bridge.observability.sources.BridgeStateSource`).

Parts this process does not run are ``None``; so is what its NATS user may not read
(restrictive mode has no stream-info permission): the first management call the server
refuses with a "Permissions Violation" turns them off for the life of the bridge (a slow
answer only leaves that one read unknown) (``management_allowed``, which start-up's
provisioning sets when it learns it).  Nothing here contains a secret.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from sqlalchemy import text

from bridge.errors import BridgeError
from bridge.routing.letter import oldest_letter_age
from bridge.transport.jsapi import JetStreamApi

if TYPE_CHECKING:  # the bridge composes this reader
    from bridge.runtime import Bridge


class BridgeStatus:
    """Reads the state of ``bridge``'s parts (module doc)."""

    def __init__(self, bridge: Bridge) -> None:
        self._bridge = bridge
        #: ``False`` once this NATS user was denied a management call (``None``: unknown).
        self.management_allowed: bool | None = None

    async def _database_ok(self) -> tuple[bool, str | None]:
        try:
            async with asyncio.timeout(2.0), self._bridge.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:  # health reports it; nothing to recover here
            return False, f"{type(exc).__name__}: {exc}"
        return True, None

    async def health(self) -> dict[str, Any]:
        """Liveness of NATS, the database, the relay and the consumer (no secrets).

        ``degraded`` (``/health`` answers 503) when NATS or the database is down, or
        when a consumer task is dead or crash-looping (:meth:`BaseConsumer.health`:
        ``consumer.problems`` says which task died and how).
        """
        db_ok, db_error = await self._database_ok()
        nats = self._bridge.connection.snapshot()
        consumer: dict[str, Any] = {"running": False, "mode": self._bridge.config.consumer_mode}
        consumer_ok = True
        if self._bridge.consumer is not None:
            tasks = self._bridge.consumer.health()
            consumer_ok = tasks.healthy
            consumer.update(
                running=self._bridge.consumer.stats().running,
                healthy=tasks.healthy,
                problems=list(tasks.problems),
                task_restarts=tasks.task_restarts,
                last_error=tasks.last_error,
            )
        ok = db_ok and bool(nats["connected"]) and consumer_ok
        return {
            "status": "ok" if ok else "degraded",
            "app": self._bridge.config.app_name,
            "nats": nats,
            "database": {"connected": db_ok, "error": db_error},
            "relay": {"running": self._bridge.relay is not None},
            "consumer": consumer,
        }

    async def _management(self, subject: str, body: dict[str, Any] | None) -> dict[str, Any] | None:
        """A management API call that answers ``None`` where this user lacks permission."""
        if self.management_allowed is False or not self._bridge.connection.is_connected:
            return None
        try:
            api = JetStreamApi(self._bridge.connection.nc, timeout=1.0)
            return await api.request(subject, body)
        except BridgeError:
            # A slow answer is no denial: only the server's verdict turns the reads off.
            if self._bridge.connection.denied_api_subject() is not None:
                self.management_allowed = False
            return None

    async def dead_letter_count(self) -> int | None:
        """Messages on this app's DLQ subject (``None`` without stream-info permission)."""
        reply = await self._management(
            f"STREAM.INFO.{self._bridge.config.stream_name}",
            {"subjects_filter": self._bridge.config.subjects.dlq},
        )
        if not reply or "state" not in reply:
            return None
        subjects = reply["state"].get("subjects") or {}
        return int(subjects.get(self._bridge.config.subjects.dlq, 0))

    async def oldest_dead_letter_age(self) -> float | None:
        """Seconds this app's oldest dead letter has waited, 0 when there is none
        (``None`` without the permission to read the stream)."""
        return await oldest_letter_age(self._management, self._bridge.config)

    async def consumer_lag(self) -> dict[str, Any] | None:
        """Pending and ack-pending counts of this app's durable (``None`` without permission)."""
        config = self._bridge.config
        reply = await self._management(
            f"CONSUMER.INFO.{config.stream_name}.{config.subjects.durable}", None
        )
        if not reply or "config" not in reply:
            return None
        return {
            "num_pending": reply.get("num_pending"),
            "num_ack_pending": reply.get("num_ack_pending"),
            "num_redelivered": reply.get("num_redelivered"),
        }

    async def status(self) -> dict[str, Any]:
        """Counters for ``/sync_status`` and metrics; parts this process lacks are ``None``."""
        outbox: dict[str, Any] | None = None
        inbox: dict[str, Any] | None = None
        if self._bridge.relay is not None:
            outbox = asdict(await self._bridge.relay.stats())
        if self._bridge.processor is not None:
            inbox = asdict(await self._bridge.processor.counts())
        consumer: dict[str, Any] = {"mode": self._bridge.config.consumer_mode}
        if self._bridge.consumer is not None:
            with contextlib.suppress(Exception):
                consumer.update(asdict(self._bridge.consumer.stats()))
        lag = await self.consumer_lag()
        consumer["num_pending"] = lag["num_pending"] if lag else None
        consumer["num_ack_pending"] = lag["num_ack_pending"] if lag else None
        return {
            "jetstream_connected": self._bridge.connection.is_connected,
            "outbox": outbox,
            "inbox": inbox,
            "dead_letters": await self.dead_letter_count(),
            "dead_letters_oldest_age_seconds": await self.oldest_dead_letter_age(),
            "consumer": consumer,
        }
