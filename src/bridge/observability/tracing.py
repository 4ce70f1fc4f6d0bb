"""W3C trace context across the bridge: HTTP request → outbox row → NATS header → handler.

Built on ``opentelemetry-api`` alone; an application that installs the SDK (and
passes its ``TracerProvider``, or sets the global one) gets recorded spans.

How a trace travels:

1. :class:`bridge.integrations.asgi.TraceMiddleware` extracts an incoming
   ``traceparent`` header and runs the request inside a server span that is its
   child (a fresh trace without one).
2. :func:`current_traceparent` renders the current span context as a W3C
   ``traceparent``; :class:`~bridge.runtime.Bridge` gives it to its
   :class:`~bridge.outbox.capture.Outbox`, which stores it in each outbox row's headers and
   its trace id in the envelope's ``trace_id``.  The relay publishes the stored
   headers unchanged, so the NATS message carries the request's ``traceparent``.
3. On the consumer side :class:`TracingMiddleware` runs every handler inside a
   ``CONSUMER`` span whose parent is the delivery's ``traceparent``
   (:func:`context_from`), so the handler's work — and anything it logs or calls —
   belongs to the producer's trace.  Handlers that need the context themselves
   can call :func:`context_from` with their envelope.  A batch handler call
   (:meth:`bridge.routing.router.Router.on_batch`) is ONE ``CONSUMER`` span
   (:func:`batch_span`, a new root with ``messaging.batch.message_count``) that
   links to every delivery's ``traceparent`` (a span has one parent, so the
   producers' traces are links, not parents); each delivery still gets its
   ``"<event_type> process"`` span, child of its ``traceparent`` and covering the
   call, so every producer's trace continues into the consumer.

Invalid or missing ``traceparent`` values are ignored (a fresh root instead),
never an error: tracing must not decide whether an event is applied.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import (
    Link,
    Span,
    SpanKind,
    Status,
    StatusCode,
    TracerProvider,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from bridge.envelope import TRACEPARENT_HEADER, Envelope
from bridge.routing.middleware import HandlerCall, Next

__all__ = [
    "TRACER_NAME",
    "TracingMiddleware",
    "batch_span",
    "context_from",
    "current_traceparent",
    "handler_span",
    "trace_id_of",
]

TRACER_NAME = "bridge"

# Stateless (it holds no configuration or data), so sharing one instance is safe.
_PROPAGATOR = TraceContextTextMapPropagator()


# -- propagation ----------------------------------------------------------------------
def current_traceparent() -> str | None:
    """The current span context as a W3C ``traceparent``, or ``None`` if there is none.

    Cheap and synchronous: called by the outbox for every captured row (inside
    SQLAlchemy's flush, which runs in the caller's context).
    """
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get(TRACEPARENT_HEADER)


def context_from(source: Envelope | Mapping[str, str] | str | None) -> Context:
    """An OpenTelemetry context whose parent span is ``source``'s ``traceparent``.

    ``source`` is an envelope (its ``traceparent``, from the NATS header), a header
    mapping or the raw value.  Missing or invalid → an empty context (a new root).
    """
    if isinstance(source, Envelope):
        value = source.traceparent
    elif isinstance(source, str) or source is None:
        value = source
    else:
        value = source.get(TRACEPARENT_HEADER)
    if not value:
        return Context()
    return _PROPAGATOR.extract({TRACEPARENT_HEADER: value}, context=Context())


def trace_id_of(traceparent: str | None) -> str | None:
    """The 32-hex trace id of a valid ``traceparent``, else ``None``."""
    span = trace.get_current_span(context_from(traceparent))
    ctx = span.get_span_context()
    return trace.format_trace_id(ctx.trace_id) if ctx.is_valid else None


# -- consumer side -------------------------------------------------------------------
def _consumer_attributes(envelope: Envelope) -> dict[str, str]:
    return {
        "messaging.system": "nats",
        "messaging.operation.type": "process",
        "messaging.message.id": envelope.event_id,
        "bridge.event_type": envelope.event_type,
        "bridge.resource_type": envelope.resource_type,
        "bridge.resource_id": envelope.resource_id,
        "bridge.producer": envelope.producer,
    }


@contextmanager
def handler_span(
    envelope: Envelope, *, tracer_provider: TracerProvider | None = None
) -> Iterator[Span]:
    """Run the block as the current ``CONSUMER`` span, child of the envelope's trace.

    An exception raised in the block is recorded on the span (status ERROR) and
    re-raised unchanged.
    """
    tracer = trace.get_tracer(TRACER_NAME, tracer_provider=tracer_provider)
    with tracer.start_as_current_span(
        f"{envelope.event_type} process",
        context=context_from(envelope),
        kind=SpanKind.CONSUMER,
        attributes=_consumer_attributes(envelope),
    ) as span:
        yield span


@contextmanager
def batch_span(
    envelopes: Sequence[Envelope], *, tracer_provider: TracerProvider | None = None
) -> Iterator[Span]:
    """Run the block as one ``CONSUMER`` span for a batch handler call (module doc, step 3).

    The batch span (current in the block) is a new root linked to each envelope's
    valid ``traceparent``.  Each envelope also gets its ``"<event_type> process"``
    span as in :func:`handler_span` (child of its ``traceparent``, linked to the
    batch span, covering the call), so every producer's trace still continues
    into the consumer.  An exception raised in the block is recorded on all of
    them and re-raised unchanged.
    """
    tracer = trace.get_tracer(TRACER_NAME, tracer_provider=tracer_provider)
    parents = [(envelope, context_from(envelope)) for envelope in envelopes]
    links = []
    for envelope, parent in parents:
        context = trace.get_current_span(parent).get_span_context()
        if context.is_valid:
            links.append(Link(context, {"messaging.message.id": envelope.event_id}))
    resource = envelopes[0].resource_type if envelopes else ""
    with tracer.start_as_current_span(
        f"{resource} process batch",
        context=Context(),
        kind=SpanKind.CONSUMER,
        links=links,
        attributes={
            "messaging.system": "nats",
            "messaging.operation.type": "process",
            "messaging.batch.message_count": len(envelopes),
            "bridge.resource_type": resource,
        },
    ) as span:
        batch_link = [Link(span.get_span_context())]
        spans = [
            tracer.start_span(
                f"{envelope.event_type} process",
                context=parent,
                kind=SpanKind.CONSUMER,
                links=batch_link,
                attributes=_consumer_attributes(envelope),
            )
            for envelope, parent in parents
        ]
        try:
            yield span
        except BaseException as exc:
            for each in spans:
                each.record_exception(exc)
                each.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
        finally:
            for each in spans:
                each.end()


class TracingMiddleware:
    """Handler middleware (:mod:`bridge.routing.middleware`): every handler call runs
    in :func:`handler_span` — a batch handler's call in :func:`batch_span` — so the
    handler's work belongs to the producer's trace (module doc, step 3)."""

    def __init__(self, *, tracer_provider: TracerProvider | None = None) -> None:
        self._tracer_provider = tracer_provider

    async def __call__(self, call: HandlerCall, call_next: Next) -> None:
        if call.batch:
            with batch_span(call.envelopes, tracer_provider=self._tracer_provider):
                await call_next()
        else:
            with handler_span(call.envelopes[0], tracer_provider=self._tracer_provider):
                await call_next()
