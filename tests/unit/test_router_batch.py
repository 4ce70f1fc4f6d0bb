"""Batch handler registration (Router.on_batch) and its tracing and metrics middleware
(pure, no I/O)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from sqlalchemy.ext.asyncio import AsyncSession

from bridge.envelope import Envelope
from bridge.errors import ConfigError, Retry
from bridge.observability.metrics import MetricsMiddleware
from bridge.observability.tracing import TracingMiddleware
from bridge.routing.router import Router

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def envelope(event_type: str = "organization.updated", rid: str = "1", **kw: object) -> Envelope:
    return Envelope(
        event_type=event_type,
        producer="b",
        resource_type=event_type.split(".", maxsplit=1)[0],
        resource_id=rid,
        payload={},
        **kw,  # type: ignore[arg-type]
    )


class Calls:
    def __init__(self, fail: bool = False) -> None:
        self.seen: list[list[str]] = []
        self.fail = fail

    async def __call__(self, session: AsyncSession, envelopes: Sequence[Envelope]) -> None:
        self.seen.append([e.resource_id for e in envelopes])
        if self.fail:
            raise Retry("not yet")


async def per_event(session: AsyncSession, env: Envelope) -> None:
    return None


def test_a_resource_has_either_a_per_event_or_a_batch_handler() -> None:
    router = Router()
    router.on_batch("organization", Calls())
    with pytest.raises(ConfigError, match="already registered"):
        router.on_resource("organization", per_event)
    with pytest.raises(ConfigError, match="already registered"):
        router.on_batch("organization", Calls())
    router.on_resource("user", per_event)
    with pytest.raises(ConfigError, match="already registered"):
        router.on_batch("user", Calls())
    with pytest.raises(ConfigError, match="must not be empty"):
        router.on_batch("", Calls())
    assert router.resource_types == frozenset({"organization", "user"})
    assert router.batch_resource_types == frozenset({"organization"})


async def test_batch_handler_lookup_and_its_one_envelope_form() -> None:
    router = Router()
    batch = Calls()
    router.on_batch("organization", batch)
    router.on("organization.created", per_event)  # an exact event type still wins
    router.on_resource("user", per_event)

    assert router.batch_handler_for(envelope()) is batch
    assert router.batch_handler_for(envelope("organization.created")) is None
    assert router.handler_for(envelope("organization.created")) is per_event
    assert router.batch_handler_for(envelope("user.updated")) is None
    assert router.batch_handler_for(envelope("invoice.updated")) is None
    assert router.handler_for(envelope("invoice.updated")) is None
    # the per-event form (the inbox's savepoint path) calls it with one envelope
    single = router.handler_for(envelope(rid="7"))
    assert single is not None
    await single(AsyncSession(), envelope(rid="7"))
    assert batch.seen == [["7"]]


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


@pytest.mark.parametrize("fail", [False, True])
async def test_traced_batch_call_is_one_span_linked_to_each_delivery_and_reports_each(
    spans: tuple[TracerProvider, InMemorySpanExporter], fail: bool
) -> None:
    provider, exporter = spans
    handled: list[tuple[str, float, BaseException | None]] = []

    class Handled:
        def handler_done(self, env: Envelope, seconds: float, error: BaseException | None) -> None:
            handled.append((env.resource_id, seconds, error))

    inner = Router()
    traced = inner.around(
        MetricsMiddleware(Handled()),  # type: ignore[arg-type]
        TracingMiddleware(tracer_provider=provider),
    )
    batch = Calls(fail=fail)
    traced.on_batch("organization", batch)  # registrations reach the router itself
    assert inner.batch_resource_types == traced.batch_resource_types == {"organization"}
    assert traced.batch_handler_for(envelope("user.updated")) is None
    handler = traced.batch_handler_for(envelope())
    assert handler is not None
    parents = [f"00-{TRACE_ID}-{i:016x}-01" for i in (1, 2)]
    envelopes = [
        envelope(rid="1", traceparent=parents[0]),
        envelope(rid="2", traceparent=parents[1]),
        envelope(rid="3"),  # no trace context: no link
    ]
    if fail:
        with pytest.raises(Retry):
            await handler(AsyncSession(), envelopes)
    else:
        await handler(AsyncSession(), envelopes)

    assert batch.seen == [["1", "2", "3"]]
    finished = exporter.get_finished_spans()
    [span] = [s for s in finished if s.name.endswith("process batch")]
    # each delivery keeps its own span in its producer's trace, linked to the batch span
    deliveries = [s for s in finished if s is not span]
    assert [s.name for s in deliveries] == ["organization.updated process"] * 3
    assert [s.attributes and s.attributes["bridge.resource_id"] for s in deliveries] == [
        "1",
        "2",
        "3",
    ]
    assert [s.parent and format(s.parent.span_id, "016x") for s in deliveries[:2]] == [
        f"{i:016x}" for i in (1, 2)
    ]
    assert all(format(s.context.trace_id, "032x") == TRACE_ID for s in deliveries[:2])
    assert deliveries[2].parent is None
    assert all([link.context for link in s.links] == [span.context] for s in deliveries)
    assert all(
        s.status.status_code is (StatusCode.ERROR if fail else StatusCode.UNSET) for s in deliveries
    )
    assert span.kind is SpanKind.CONSUMER and span.name == "organization process batch"
    assert span.attributes is not None
    assert span.attributes["messaging.batch.message_count"] == 3
    assert [(format(link.context.span_id, "016x")) for link in span.links] == [
        f"{i:016x}" for i in (1, 2)
    ]
    assert span.status.status_code is (StatusCode.ERROR if fail else StatusCode.UNSET)
    # metrics: one report per envelope, each with an equal share of the call's time
    assert [h[0] for h in handled] == ["1", "2", "3"]
    assert len({h[1] for h in handled}) == 1 and handled[0][1] >= 0
    assert all((h[2] is not None) is fail for h in handled)
