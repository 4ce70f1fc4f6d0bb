"""``Bridge``: the composition root wiring connection, provisioning, relay and consumer.

Start order: check the event schema versions (a gap in an upcaster chain is a
ConfigError before anything connects, :mod:`bridge.event_schemas`) → connect to
NATS → provision (``auto_provision=True``: apply) or verify
(``auto_provision=False``: read-only; falls back to a permission-limited runtime
probe when the app's NATS user may not call the JetStream management API) → start
the outbox relay → start the consumer.  Stop order is the reverse: the consumer
finishes and acks its in-flight deliveries, the relay finishes its batch (PubAcks),
then the connection drains.  A failure during start stops whatever had started and
re-raises, so a misconfigured app fails fast with the provisioning error's message.

With ``synced_models`` the bridge also answers the peer's reconciliation requests
and, when ``reconcile.interval`` is set, runs periodic anti-entropy passes
(:mod:`bridge.reconcile`); both stop first on shutdown.

Web and worker processes scale separately: ``enable_consumer=False`` /
``enable_relay=False`` in the config turn either part off in a process.

Observability: every Bridge has its own :class:`~bridge.metrics.BridgeMetrics`
(``bridge.metrics``, its own Prometheus registry) fed by the relay, the consumer
and the handlers, plus gauges read from :meth:`Bridge.status` at scrape time and the
consumer's supervision counters (:mod:`bridge.metrics_consumer`, read without I/O).  Its
outbox stamps each row with the current W3C ``traceparent``
(:func:`bridge.tracing.current_traceparent`; an ``outbox`` passed in keeps its own
setting) and its handlers run in a span that continues the producer's trace
(:class:`bridge.tracing.TracedRouter`, ``tracer_provider`` or the global one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import asdict
from types import TracebackType
from typing import Any

from opentelemetry.trace import TracerProvider
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bridge.access import verify_runtime_access
from bridge.config import BridgeConfig
from bridge.connection import Connection
from bridge.consumer import PullConsumer, PushConsumer, make_consumer
from bridge.dlq import DeadLetters
from bridge.dlq_letter import oldest_letter_age
from bridge.errors import BridgeError, PermissionDeniedError
from bridge.event_schemas import EventSchemas
from bridge.inbox import InboxProcessor
from bridge.inbox_retention import InboxRetention
from bridge.jsapi import JetStreamApi
from bridge.metrics import BridgeMetrics, BridgeStateSource, RelayStateSource
from bridge.metrics_consumer import ConsumerTasksSource
from bridge.outbox import Outbox, Synced
from bridge.provisioning import Plan, Provisioner, consumer_spec, stream_spec
from bridge.publisher import Publisher
from bridge.reconcile import PeriodicReconciler, Reconciler
from bridge.reconcile_responder import ReconcileResponder
from bridge.relay import OutboxRelay
from bridge.router import Router
from bridge.tracing import TracedRouter, current_traceparent

log = logging.getLogger("bridge.runtime")

#: How long a management call may take before we assume the user lacks the permission.
MANAGEMENT_PROBE_TIMEOUT = 2.0


class Bridge:
    """One side of a synced pair, running inside an application or a worker process."""

    def __init__(
        self,
        config: BridgeConfig,
        *,
        engine: AsyncEngine,
        router: Router | None = None,
        outbox: Outbox | None = None,
        dispose_engine: bool = False,
        metrics: BridgeMetrics | None = None,
        tracer_provider: TracerProvider | None = None,
        event_schemas: EventSchemas | None = None,
        synced_models: Sequence[type[Synced]] = (),
    ) -> None:
        """``event_schemas``: the versions of the app's event types, used to stamp
        published events and to upcast consumed ones (an ``outbox`` passed in
        keeps its own).  ``synced_models``: the app's :class:`~bridge.outbox.Synced`
        models; with them the bridge answers the peer's reconciliation requests and
        runs the periodic reconciler when ``reconcile.interval`` is set."""
        self.config = config
        self.synced_models = tuple(synced_models)
        self.engine = engine
        self.router = router or Router()
        self.event_schemas = event_schemas or EventSchemas()
        self.outbox = outbox or Outbox(
            config, traceparent=current_traceparent, schemas=self.event_schemas
        )
        self.metrics = metrics or BridgeMetrics()
        self.metrics.add_source("bridge", BridgeStateSource(self.status))
        self.metrics.add_source(
            "relay", RelayStateSource(lambda: self.relay is not None and self.relay.running)
        )
        self.metrics.add_source(
            "consumer",
            ConsumerTasksSource(lambda: None if self.consumer is None else self.consumer.stats()),
        )
        self.tracer_provider = tracer_provider
        self.session_factory: async_sessionmaker[AsyncSession] = async_sessionmaker(
            engine, expire_on_commit=False, sync_session_class=self.outbox.session_class
        )
        self.connection = Connection(config)
        self.relay: OutboxRelay | None = None
        self.consumer: PullConsumer | PushConsumer | None = None
        self.processor: InboxProcessor | None = None
        self.inbox_retention: InboxRetention | None = None
        self.dead_letters: DeadLetters | None = None
        self.publisher: Publisher | None = None
        self.provisioning_plan: Plan | None = None
        self.reconcile_responder: ReconcileResponder | None = None
        self.periodic_reconciler: PeriodicReconciler | None = None
        self._dispose_engine = dispose_engine
        self._management_allowed: bool | None = None
        self._started = False

    # -- lifecycle ------------------------------------------------------------------
    async def start(self, timeout: float = 30.0) -> None:
        """Connect, provision or verify, then start the relay and the consumer."""
        if self._started:
            return
        self.event_schemas.check()
        try:
            await self.connection.start(timeout=timeout)
            await self._provision()
            js = self.connection.js
            self.publisher = Publisher(
                js, stream=self.config.stream_name, timeout=self.config.relay.publish_timeout
            )
            if self.config.use_dlq:
                self.dead_letters = DeadLetters(self.config, js, self.publisher)
            if self.config.enable_relay:
                self.relay = OutboxRelay(
                    self.config,
                    self.engine,
                    self.publisher,
                    outbox=self.outbox,
                    connected=lambda: self.connection.is_connected,
                    observer=self.metrics,
                )
                await self.relay.start()
            if self.config.enable_consumer:
                router = TracedRouter(
                    self.router,
                    tracer_provider=self.tracer_provider,
                    on_handled=self.metrics.handler_done,
                )
                self.processor = InboxProcessor(
                    self.config,
                    self.session_factory,
                    router,
                    self.dead_letters,
                    schemas=self.event_schemas,
                    schema_observer=self.metrics,
                )
                self.consumer = make_consumer(self.config, self.connection, self.processor)
                self.consumer.observer = self.metrics
                await self.consumer.start()
                if self.config.use_inbox:
                    self.inbox_retention = InboxRetention(self.engine, self.config.consumer)
                    await self.inbox_retention.start()
            await self._start_reconciliation()
        except BaseException:
            await self.stop(timeout=5.0)
            raise
        self._started = True
        if self.config.retry_budget <= self.config.relay.lease:
            # A child event retried while its parent's outbox row sits in a crashed
            # relay's lease is dead-lettered before the lease frees the parent.
            log.warning(
                "retry budget shorter than the relay lease",
                extra={
                    "retry_budget_seconds": round(self.config.retry_budget, 3),
                    "relay_lease_seconds": self.config.relay.lease,
                    "hint": "raise backoff/max_deliver or lower relay.lease",
                },
            )
        log.info(
            "bridge started",
            extra={
                "app": self.config.app_name,
                "destination": self.config.destination_app,
                "consumer_mode": self.config.consumer_mode,
                "auto_provision": self.config.auto_provision,
            },
        )

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop consumer, then relay, then drain the connection; each gets ``timeout``."""
        self._started = False
        periodic, self.periodic_reconciler = self.periodic_reconciler, None
        responder, self.reconcile_responder = self.reconcile_responder, None
        if periodic is not None:
            await periodic.stop(timeout)
        if responder is not None:
            await responder.stop(timeout)
        consumer, self.consumer = self.consumer, None
        relay, self.relay = self.relay, None
        retention, self.inbox_retention = self.inbox_retention, None
        if consumer is not None:
            await consumer.stop(timeout)
        if retention is not None:
            await retention.stop(timeout)
        if relay is not None:
            await relay.stop(timeout)
        await self.connection.stop(timeout)
        if self._dispose_engine:
            await self.engine.dispose()

    def reconciler(self) -> Reconciler:
        """A reconciler of this bridge's synced models against the peer (connected)."""
        return Reconciler(
            self.config,
            self.connection.nc,
            self.engine,
            self.synced_models,
            outbox=self.outbox,
            session_factory=self.session_factory,
            observer=self.metrics,
        )

    async def _start_reconciliation(self) -> None:
        """Anti-entropy (:mod:`bridge.reconcile`): only for a bridge given its synced models."""
        if not self.synced_models:
            return
        options = self.config.reconcile
        if options.responder:
            self.reconcile_responder = ReconcileResponder(
                self.config,
                self.connection.nc,
                self.engine,
                self.synced_models,
                outbox=self.outbox,
                session_factory=self.session_factory,
                observer=self.metrics,
            )
            await self.reconcile_responder.start()
        interval = options.interval_seconds
        if interval:
            self.periodic_reconciler = PeriodicReconciler(self.reconciler(), interval)
            await self.periodic_reconciler.start()

    async def __aenter__(self) -> Bridge:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _provision(self) -> None:
        consumers = [consumer_spec(self.config)] if self.config.enable_consumer else []
        provisioner = Provisioner(
            JetStreamApi(self.connection.nc, timeout=MANAGEMENT_PROBE_TIMEOUT)
        )
        if self.config.auto_provision:
            self.provisioning_plan = await provisioner.apply(stream_spec(self.config), consumers)
            self._management_allowed = True
            if not self.provisioning_plan.empty:
                log.info("provisioned", extra={"plan": self.provisioning_plan.describe()})
            return
        try:
            await provisioner.verify(stream_spec(self.config), consumers)
            self._management_allowed = True
        except PermissionDeniedError:
            # Restrictive mode: this user may not read stream/consumer info.  Probe
            # only what the runtime needs, with the operations it is allowed.
            self._management_allowed = False
            await verify_runtime_access(self.connection, self.config)

    # -- observability --------------------------------------------------------------
    async def _database_ok(self) -> tuple[bool, str | None]:
        try:
            async with asyncio.timeout(2.0), self.engine.connect() as conn:
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
        nats = self.connection.snapshot()
        consumer: dict[str, Any] = {"running": False, "mode": self.config.consumer_mode}
        consumer_ok = True
        if self.consumer is not None:
            tasks = self.consumer.health()
            consumer_ok = tasks.healthy
            consumer.update(
                running=self.consumer.stats().running,
                healthy=tasks.healthy,
                problems=list(tasks.problems),
                task_restarts=tasks.task_restarts,
                last_error=tasks.last_error,
            )
        ok = db_ok and bool(nats["connected"]) and consumer_ok
        return {
            "status": "ok" if ok else "degraded",
            "app": self.config.app_name,
            "nats": nats,
            "database": {"connected": db_ok, "error": db_error},
            "relay": {"running": self.relay is not None},
            "consumer": consumer,
        }

    async def _management(self, subject: str, body: dict[str, Any] | None) -> dict[str, Any] | None:
        """A management API call that answers ``None`` where this user lacks permission."""
        if self._management_allowed is False or not self.connection.is_connected:
            return None
        try:
            return await JetStreamApi(self.connection.nc, timeout=1.0).request(subject, body)
        except PermissionDeniedError:
            self._management_allowed = False
            return None
        except BridgeError:
            return None

    async def dead_letter_count(self) -> int | None:
        """Messages on this app's DLQ subject (``None`` without stream-info permission)."""
        reply = await self._management(
            f"STREAM.INFO.{self.config.stream_name}",
            {"subjects_filter": self.config.subjects.dlq},
        )
        if not reply or "state" not in reply:
            return None
        subjects = reply["state"].get("subjects") or {}
        return int(subjects.get(self.config.subjects.dlq, 0))

    async def oldest_dead_letter_age(self) -> float | None:
        """Seconds this app's oldest dead letter has waited, 0 when there is none
        (``None`` without the permission to read the stream)."""
        return await oldest_letter_age(self._management, self.config)

    async def consumer_lag(self) -> dict[str, Any] | None:
        """Pending and ack-pending counts of this app's durable (``None`` without permission)."""
        reply = await self._management(
            f"CONSUMER.INFO.{self.config.stream_name}.{self.config.subjects.durable}", None
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
        if self.relay is not None:
            outbox = asdict(await self.relay.stats())
        if self.processor is not None:
            inbox = asdict(await self.processor.counts())
        consumer: dict[str, Any] = {"mode": self.config.consumer_mode}
        if self.consumer is not None:
            with contextlib.suppress(Exception):
                consumer.update(asdict(self.consumer.stats()))
        lag = await self.consumer_lag()
        consumer["num_pending"] = lag["num_pending"] if lag else None
        consumer["num_ack_pending"] = lag["num_ack_pending"] if lag else None
        return {
            "jetstream_connected": self.connection.is_connected,
            "outbox": outbox,
            "inbox": inbox,
            "dead_letters": await self.dead_letter_count(),
            "dead_letters_oldest_age_seconds": await self.oldest_dead_letter_age(),
            "consumer": consumer,
        }
