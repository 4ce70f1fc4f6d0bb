"""``Bridge``: the composition root wiring connection, provisioning, relay and consumer.

Start order: check the event schema versions (a gap in an upcaster chain is a
ConfigError before anything connects, :mod:`bridge.event_schemas`) → check the
database schema (the bridge's tables, each synced model's capture trigger at this
app's versions: one SchemaError naming all that is missing and the fix,
:mod:`bridge.schema_check`) → record this app as the producer of writes made
outside a bridge session (:meth:`~bridge.outbox.capture.Outbox.record_producer`) → connect to
NATS → provision (``auto_provision=True``: apply) or verify
(``auto_provision=False``: read-only; falls back to a permission-limited runtime
probe when the app's NATS user may not call the JetStream management API) → start
the outbox relay → start the consumer.  A failure during start stops whatever had started and
re-raises, so a misconfigured app fails fast with the provisioning error's message.

Stopping: ``stop(timeout)`` is one deadline for everything.  The reconciliation
parts, the consumer (finishes and acks its in-flight deliveries), the inbox
retention and the relay (finishes its batches' PubAcks and marks) stop side by side
with the timeout minus a reserve (:data:`CONNECTION_RESERVE`, at most a quarter of
it); what still runs then is cancelled and redelivered or republished later (the
inbox and the duplicate window absorb it).  The reserve drains the connection and
disposes the engine when the bridge owns it.

With ``synced_models`` of which some opt in to reconciliation
(``__bridge_reconcile__ = True``, :mod:`bridge.reconcile.synced_models`; checked at
construction) the bridge also answers the peer's reconciliation requests about
them and, when ``reconcile.interval`` is set, runs periodic anti-entropy passes
(:mod:`bridge.reconcile.reconciler`).

Web and worker processes scale separately: ``enable_consumer=False`` /
``enable_relay=False`` in the config turn either part off in a process.

Observability: every Bridge has its own :class:`~bridge.observability.metrics.BridgeMetrics`
(its own Prometheus registry) fed by the relay, the consumer and the handlers, plus
gauges read at scrape time from :meth:`Bridge.status` and, without I/O, the consumer's
supervision counters (:mod:`bridge.observability.sources`).  Its
outbox stamps each row with the current W3C ``traceparent``
(:func:`bridge.observability.tracing.current_traceparent`; an ``outbox`` passed in keeps its own
setting) and its handlers run in a span that continues the producer's trace
(:class:`~bridge.observability.tracing.TracingMiddleware`, ``tracer_provider`` or the global
one), timed by :class:`~bridge.observability.metrics.MetricsMiddleware`; both wrap the
router's own middleware (:meth:`bridge.routing.router.Router.around`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Protocol

from opentelemetry.trace import TracerProvider
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bridge.config import BridgeConfig
from bridge.consumer.pull import PullConsumer
from bridge.consumer.push import PushConsumer
from bridge.errors import PermissionDeniedError
from bridge.event_schemas import EventSchemas
from bridge.inbox.processor import InboxProcessor
from bridge.inbox.retention import InboxRetention
from bridge.observability.metrics import BridgeMetrics, MetricsMiddleware
from bridge.observability.sources import (
    BridgeStateSource,
    ConsumerTasksSource,
    RelayStateSource,
)
from bridge.observability.status import BridgeStatus
from bridge.observability.tracing import TracingMiddleware, current_traceparent
from bridge.outbox.capture import Outbox, Synced
from bridge.outbox.relay import OutboxRelay
from bridge.provisioning.access import verify_runtime_access
from bridge.provisioning.provisioner import Plan, Provisioner
from bridge.provisioning.specs import consumer_spec, stream_spec
from bridge.reconcile._digest import LocalSide
from bridge.reconcile.reconciler import Reconciler
from bridge.reconcile.responder import ReconcileResponder
from bridge.reconcile.schedule import PeriodicReconciler
from bridge.reconcile.synced_models import reconciled_models
from bridge.routing.dlq import DeadLetters
from bridge.routing.router import Router
from bridge.schema_check import check_schema
from bridge.transport.connection import Connection
from bridge.transport.jsapi import JetStreamApi
from bridge.transport.publisher import Publisher

log = logging.getLogger("bridge.runtime")

#: How long a management call may take before we assume the user lacks the permission.
MANAGEMENT_PROBE_TIMEOUT = 2.0
#: Seconds of stop()'s timeout kept for draining the connection (at most a quarter).
CONNECTION_RESERVE = 1.0


class _Stoppable(Protocol):
    async def stop(self, timeout: float = ...) -> None: ...


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.0)


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
        keeps its own).  ``synced_models``: the app's :class:`~bridge.outbox.capture.Synced`
        models; for those that opt in (``__bridge_reconcile__ = True``) the bridge
        answers the peer's reconciliation requests and runs the periodic reconciler
        when ``reconcile.interval`` is set.  :class:`~bridge.errors.ConfigError` if a
        model opts in but lacks what reconciliation needs (it names what)."""
        self.config = config
        self.synced_models = tuple(synced_models)
        self.reconciled_models = reconciled_models(self.synced_models)
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
        self.observed = BridgeStatus(self)
        self._started = False

    # -- lifecycle ------------------------------------------------------------------
    async def start(self, timeout: float = 30.0) -> None:
        """Connect, provision or verify, then start the relay and the consumer."""
        if self._started:
            return
        self.event_schemas.check()
        await check_schema(self.engine, self.synced_models, self.outbox.schemas)
        await self.outbox.record_producer(self.engine)
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
                router = self.router.around(
                    MetricsMiddleware(self.metrics),
                    TracingMiddleware(tracer_provider=self.tracer_provider),
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
        """Stop every part within ``timeout`` seconds in all (module doc, "Stopping")."""
        self._started = False
        deadline = time.monotonic() + timeout
        parts: list[_Stoppable | None] = [
            self.periodic_reconciler,
            self.reconcile_responder,
            self.consumer,
            self.inbox_retention,
            self.relay,
        ]
        self.periodic_reconciler = self.reconcile_responder = None
        self.consumer, self.inbox_retention, self.relay = None, None, None
        parts_deadline = deadline - min(CONNECTION_RESERVE, timeout / 4)
        await asyncio.gather(
            *(part.stop(_left(parts_deadline)) for part in parts if part is not None)
        )
        await self.connection.stop(_left(deadline))
        if self._dispose_engine:
            try:
                await asyncio.wait_for(self.engine.dispose(), max(_left(deadline), 0.1))
            except TimeoutError:
                log.warning("engine dispose did not finish within the stop deadline")

    def reconciler(self) -> Reconciler:
        """A reconciler of this bridge's synced models against the peer (connected)."""
        return Reconciler(self._local_side(), observer=self.metrics)

    def _local_side(self) -> LocalSide:
        return LocalSide(
            self.config,
            self.connection.nc,
            self.engine,
            self.reconciled_models,
            outbox=self.outbox,
            session_factory=self.session_factory,
        )

    async def _start_reconciliation(self) -> None:
        """Anti-entropy (:mod:`bridge.reconcile.reconciler`), for models that opted in."""
        if not self.reconciled_models:
            return
        options = self.config.reconcile
        if options.responder:
            self.reconcile_responder = ReconcileResponder(self._local_side(), observer=self.metrics)
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
            self.observed.management_allowed = True
            if not self.provisioning_plan.empty:
                log.info("provisioned", extra={"plan": self.provisioning_plan.describe()})
            return
        try:
            await provisioner.verify(stream_spec(self.config), consumers)
            self.observed.management_allowed = True
        except PermissionDeniedError:
            # Restrictive mode: this user may not read stream/consumer info.  Probe
            # only what the runtime needs, with the operations it is allowed.
            self.observed.management_allowed = False
            await verify_runtime_access(self.connection, self.config)

    # -- observability (bridge.observability.status) ----------------------------------
    async def health(self) -> dict[str, Any]:
        """Liveness of NATS, the database, the relay and the consumer (no secrets)."""
        return await self.observed.health()

    async def status(self) -> dict[str, Any]:
        """Counters for ``/sync_status`` and metrics; parts this process lacks are ``None``."""
        return await self.observed.status()
