"""bridge.observability.tracing: traceparent propagation, handler spans, ASGI middleware (no I/O).

Spans are recorded by an opentelemetry-sdk ``TracerProvider`` passed explicitly
(never installed globally), so the no-SDK behaviour — the global no-op tracer —
is tested in the same process.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from sqlalchemy.ext.asyncio import AsyncSession

from bridge.envelope import Envelope
from bridge.errors import Retry
from bridge.integrations.asgi import TraceMiddleware
from bridge.observability.metrics import MetricsMiddleware
from bridge.observability.tracing import (
    TracingMiddleware,
    context_from,
    current_traceparent,
    handler_span,
    trace_id_of,
)
from bridge.routing.router import Router

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"
TRACEPARENT_RE = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def envelope(
    traceparent: str | None = TRACEPARENT, event_type: str = "organization.created"
) -> Envelope:
    return Envelope(
        event_type=event_type,
        producer="a",
        resource_type=event_type.split(".", maxsplit=1)[0],
        resource_id="r1",
        payload={},
        traceparent=traceparent,
    )


def hexid(value: int, width: int) -> str:
    return format(value, f"0{width}x")


# -- propagation -------------------------------------------------------------------------
def test_no_current_span_means_no_traceparent() -> None:
    assert current_traceparent() is None


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "garbage",
        f"00-{'0' * 32}-{SPAN_ID}-01",  # all-zero trace id is invalid
        f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero span id is invalid
        f"00-{TRACE_ID[:-1]}-{SPAN_ID}-01",
    ],
)
def test_missing_or_invalid_traceparent_gives_a_root_context(value: str | None) -> None:
    for source in (value, {"traceparent": value} if value is not None else {}, envelope(value)):
        span = trace.get_current_span(context_from(source))
        assert not span.get_span_context().is_valid
    assert trace_id_of(value) is None


def test_context_from_envelope_headers_and_string_agree() -> None:
    for source in (TRACEPARENT, {"traceparent": TRACEPARENT}, envelope()):
        ctx = trace.get_current_span(context_from(source)).get_span_context()
        assert ctx.is_valid and ctx.is_remote
        assert hexid(ctx.trace_id, 32) == TRACE_ID
        assert hexid(ctx.span_id, 16) == SPAN_ID
    assert trace_id_of(TRACEPARENT) == TRACE_ID


def test_without_sdk_the_incoming_context_passes_through_unchanged() -> None:
    # The global provider is the API's no-op one: no span of its own, parent kept.
    with handler_span(envelope()) as span:
        assert not span.is_recording()
        assert current_traceparent() == TRACEPARENT
    assert current_traceparent() is None


def test_handler_span_is_a_consumer_child_of_the_envelope(spans) -> None:
    provider, exporter = spans
    env = envelope()
    with handler_span(env, tracer_provider=provider):
        inside = current_traceparent()
    (span,) = exporter.get_finished_spans()
    assert span.kind is SpanKind.CONSUMER
    assert span.name == "organization.created process"
    assert hexid(span.context.trace_id, 32) == TRACE_ID
    assert span.parent is not None and hexid(span.parent.span_id, 16) == SPAN_ID
    assert span.attributes is not None
    assert span.attributes["messaging.message.id"] == env.event_id
    assert span.attributes["bridge.resource_id"] == "r1"
    # The handler sees its own span as current: same trace, new span id.
    match = TRACEPARENT_RE.match(inside or "")
    assert match and match.group(1) == TRACE_ID
    assert match.group(2) == hexid(span.context.span_id, 16) != SPAN_ID


# -- TracingMiddleware + MetricsMiddleware ------------------------------------------------
class Handled:
    """What MetricsMiddleware reports (the BridgeMetrics hook it calls)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float, BaseException | None]] = []

    def handler_done(self, env: Envelope, seconds: float, error: BaseException | None) -> None:
        self.calls.append((env.event_type, seconds, error))


async def test_middleware_runs_handlers_in_a_child_span_and_reports_each_call(spans) -> None:
    provider, exporter = spans
    seen: list[str | None] = []
    handled = Handled()

    async def ok(session: AsyncSession, env: Envelope) -> None:
        seen.append(current_traceparent())

    async def transient(session: AsyncSession, env: Envelope) -> None:
        raise Retry("parent not here yet")

    inner = Router(unknown_event_policy="retry")
    traced = inner.around(
        MetricsMiddleware(handled),  # type: ignore[arg-type]
        TracingMiddleware(tracer_provider=provider),
    )
    traced.on("organization.created", ok)  # registrations reach the router itself
    inner.on_resource("user", transient)  # ... and later ones on it are seen
    assert traced.unknown_event_policy == "retry"
    assert inner.event_types == traced.event_types == frozenset({"organization.created"})
    assert traced.resource_types == frozenset({"user"})
    assert traced.handler_for(envelope(event_type="invoice.created")) is None
    assert inner.handler_for(envelope()) is ok  # the router itself is not wrapped

    session = AsyncSession()
    org_handler = traced.handler_for(envelope())
    assert org_handler is not None
    await org_handler(session, envelope())
    user_handler = traced.handler_for(envelope(event_type="user.updated"))
    assert user_handler is not None
    with pytest.raises(Retry):
        await user_handler(session, envelope(event_type="user.updated"))

    assert [h[0] for h in handled.calls] == ["organization.created", "user.updated"]
    assert all(h[1] >= 0 for h in handled.calls)
    assert handled.calls[0][2] is None and isinstance(handled.calls[1][2], Retry)
    org_span, user_span = exporter.get_finished_spans()
    assert seen == [f"00-{TRACE_ID}-{hexid(org_span.context.span_id, 16)}-01"]
    assert org_span.status.status_code is StatusCode.UNSET
    assert user_span.status.status_code is StatusCode.ERROR
    assert [e.name for e in user_span.events] == ["exception"]
    for span in (org_span, user_span):
        assert span.parent is not None and hexid(span.parent.span_id, 16) == SPAN_ID


# -- TraceMiddleware ---------------------------------------------------------------------
def make_app(provider: TracerProvider | None, *, generate_ids: bool = True) -> FastAPI:
    app = FastAPI()
    app.add_middleware(TraceMiddleware, tracer_provider=provider, generate_ids=generate_ids)

    @app.post("/things/{thing_id}", status_code=201)
    async def create(thing_id: str) -> dict[str, str | None]:
        return {"traceparent": current_traceparent()}

    return app


async def post(app: FastAPI, headers: dict[str, str] | None = None) -> str | None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.post("/things/7", headers=headers or {})
    assert response.status_code == 201
    value: str | None = response.json()["traceparent"]
    return value


async def test_middleware_makes_the_request_a_child_of_the_incoming_traceparent(spans) -> None:
    provider, exporter = spans
    inside = await post(make_app(provider), {"traceparent": TRACEPARENT})
    (span,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert isinstance(span, ReadableSpan)
    assert span.name == "POST /things/{thing_id}"
    assert span.attributes is not None
    assert span.attributes["http.response.status_code"] == 201
    assert span.parent is not None and hexid(span.parent.span_id, 16) == SPAN_ID
    assert inside == f"00-{TRACE_ID}-{hexid(span.context.span_id, 16)}-01"


async def test_middleware_starts_a_new_trace_without_an_incoming_one(spans) -> None:
    provider, exporter = spans
    inside = await post(make_app(provider))
    (span,) = exporter.get_finished_spans()
    assert span.parent is None
    match = TRACEPARENT_RE.match(inside or "")
    assert match is not None
    assert match.groups() == (hexid(span.context.trace_id, 32), hexid(span.context.span_id, 16))


async def test_middleware_without_sdk_passes_through_or_generates_ids() -> None:
    assert await post(make_app(None), {"traceparent": TRACEPARENT}) == TRACEPARENT
    first, second = await post(make_app(None)), await post(make_app(None))
    for value in (first, second):
        assert value is not None and TRACEPARENT_RE.match(value)
    assert first != second
    assert await post(make_app(None, generate_ids=False)) is None
    assert current_traceparent() is None  # nothing leaks out of the request
