"""ASGI middleware: each HTTP request runs in a ``SERVER`` span continuing an incoming
``traceparent`` — the first step of a trace that goes on through the outbox row, the
NATS headers and the consumer's handler (:mod:`bridge.observability.tracing`).

Without an incoming header it starts a new trace; without an SDK (no-op tracer, no
span ids of its own) it still makes the request's context valid: the incoming context
is passed through as is, and a request without one gets fresh random ids, so every
captured event carries a trace id to correlate logs with.  No Starlette dependency:
plain ASGI.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags, TracerProvider

from bridge.observability.tracing import TRACER_NAME, context_from

# Minimal ASGI types, so the library does not depend on Starlette.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _fresh_span_context() -> SpanContext:
    # Sampled, so a downstream SDK with a parent-based sampler records its part of
    # the trace even though this process records nothing.
    return SpanContext(
        trace_id=secrets.randbits(128) or 1,
        span_id=secrets.randbits(64) or 1,
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )


class TraceMiddleware:
    """Each HTTP request runs in a ``SERVER`` span (module doc).

    The span is named ``"<METHOD> <route template>"`` once routing has happened
    (``"<METHOD>"`` otherwise) and carries the response status code.
    ``generate_ids=False`` leaves requests without an incoming ``traceparent``
    untraced when no SDK is installed.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        tracer_provider: TracerProvider | None = None,
        generate_ids: bool = True,
    ) -> None:
        self.app = app
        self._tracer_provider = tracer_provider
        self._generate_ids = generate_ids

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        headers = {
            key.decode("latin-1").lower(): value.decode("latin-1")
            for key, value in scope.get("headers") or ()
        }
        parent = context_from(headers)
        method = str(scope.get("method", "HTTP"))
        tracer = trace.get_tracer(TRACER_NAME, tracer_provider=self._tracer_provider)
        with tracer.start_as_current_span(
            method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": str(scope.get("path", ""))},
        ) as span:
            token = None
            if self._generate_ids and not span.get_span_context().is_valid:
                # No SDK and no incoming trace: ids of our own, for correlation.
                token = otel_context.attach(
                    trace.set_span_in_context(NonRecordingSpan(_fresh_span_context()))
                )

            async def send_traced(message: Message) -> None:
                if message.get("type") == "http.response.start":
                    span.set_attribute("http.response.status_code", int(message["status"]))
                await send(message)

            try:
                await self.app(scope, receive, send_traced)
            finally:
                route = scope.get("route")
                template = getattr(route, "path", None)
                if template:
                    span.update_name(f"{method} {template}")
                if token is not None:
                    otel_context.detach(token)
