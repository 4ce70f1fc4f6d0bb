"""W3C trace context from an HTTP request on A to the handler on B (real NATS + PostgreSQL).

``traceparent: 00-<trace>-<span>-01`` sent to ``POST /organizations`` on A must end
up in A's outbox row (header + envelope ``trace_id``), in the NATS message's
``traceparent`` header, and — with an SDK — as the parent chain of B's handler
span.  SDK providers are passed to each app explicitly (never installed
globally), so the no-SDK path (the API's no-op tracer) is tested too.
"""

from __future__ import annotations

import re
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from nats.js import JetStreamContext
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy import text

from bridge.outbox.body import envelope_sql
from bridge.testing import NatsServer, PostgresServer
from services.shared.app import create_app
from services.shared.db import migrate
from services.shared.settings import ServiceSettings

_E2E = str(Path(__file__).resolve().parents[1] / "e2e")
if _E2E not in sys.path:  # the in-process service harness of the e2e tests
    sys.path.insert(0, _E2E)
from e2e_support import FAST, Side, eventually  # noqa: E402

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
SPAN_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"
TRACEPARENT_RE = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")


async def start_traced_side(
    stack: AsyncExitStack,
    postgres: PostgresServer,
    *,
    name: str,
    peer: str,
    stream: str,
    nats_url: str,
    tracer_provider: TracerProvider | None,
) -> Side:
    """Like ``e2e_support.start_side``, with the app's ``tracer_provider``."""
    url = await postgres.create_database()
    stack.push_async_callback(postgres.drop_database, url)
    await migrate(url)
    settings = ServiceSettings(
        app_name=name,
        destination_app=peer,
        database_url=url,
        db_pool_size=5,
        id_system_number=1 if name < peer else 2,
    )
    config = settings.to_bridge_config(env={"NATS_URL": nats_url, "STREAM_NAME": stream}, **FAST)
    app = create_app(settings, bridge_config=config, tracer_provider=tracer_provider)
    await stack.enter_async_context(app.router.lifespan_context(app))
    client = await stack.enter_async_context(
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{name}")
    )
    return Side(name, app, client, url, config)


def sdk() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def hexid(value: int, width: int) -> str:
    return format(value, f"0{width}x")


async def outbox_row(side: Side, resource_id: int) -> dict[str, Any]:
    async with side.state.engine.connect() as conn:
        result = await conn.execute(
            text(
                f"SELECT headers, {envelope_sql()} AS payload FROM bridge_outbox "
                "WHERE resource_id = :id"
            ),
            {"id": str(resource_id)},
        )
        (row,) = result.mappings().all()
        return dict(row)


async def create_org(side: Side, domain: str, headers: dict[str, str]) -> int:
    response = await side.client.post(
        "/organizations", json={"name": domain, "domain": domain}, headers=headers
    )
    assert response.status_code == 201, response.text
    org_id: int = response.json()["id"]
    return org_id


async def applied(side: Side, org_id: int) -> None:
    async def probe() -> bool:
        return (await side.client.get(f"/organizations/{org_id}")).status_code == 200

    await eventually(probe, what=f"organization {org_id} on {side.name}")


@pytest.fixture
async def js(nats_server: NatsServer) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(nats_server.url)
    yield nc.jetstream()
    await nc.close()


async def test_without_sdk_the_request_trace_reaches_the_outbox_and_the_nats_header(
    nats_server: NatsServer, postgres: PostgresServer, unique: str, js: JetStreamContext
) -> None:
    stream = f"trace-{unique}"
    async with AsyncExitStack() as stack:
        a, b = [
            await start_traced_side(
                stack, postgres, name=f"{me}{unique}", peer=f"{peer}{unique}", stream=stream,
                nats_url=nats_server.url, tracer_provider=None,
            )
            for me, peer in (("a", "b"), ("b", "a"))
        ]  # fmt: skip

        org_id = await create_org(a, "traced.test", {"traceparent": TRACEPARENT})
        row = await outbox_row(a, org_id)
        # No SDK: no span of A's own, the caller's context passes through unchanged.
        assert row["headers"]["traceparent"] == TRACEPARENT
        assert row["payload"]["trace_id"] == TRACE_ID
        await applied(b, org_id)
        message = await js.get_last_msg(stream, a.config.subjects.publish)
        assert message.headers is not None
        assert message.headers["traceparent"] == TRACEPARENT

        # Without an incoming traceparent the request still gets ids of its own.
        other_id = await create_org(a, "untraced.test", {})
        other = await outbox_row(a, other_id)
        match = TRACEPARENT_RE.match(other["headers"]["traceparent"])
        assert match is not None and match.group(1) != TRACE_ID
        assert other["payload"]["trace_id"] == match.group(1) != "0" * 32


async def test_with_sdk_the_handler_span_on_b_continues_the_request_trace_from_a(
    nats_server: NatsServer, postgres: PostgresServer, unique: str
) -> None:
    stream = f"trace-{unique}"
    (provider_a, spans_a), (provider_b, spans_b) = sdk(), sdk()
    async with AsyncExitStack() as stack:
        stack.callback(provider_a.shutdown)
        stack.callback(provider_b.shutdown)
        a = await start_traced_side(
            stack, postgres, name=f"a{unique}", peer=f"b{unique}", stream=stream,
            nats_url=nats_server.url, tracer_provider=provider_a,
        )  # fmt: skip
        b = await start_traced_side(
            stack, postgres, name=f"b{unique}", peer=f"a{unique}", stream=stream,
            nats_url=nats_server.url, tracer_provider=provider_b,
        )  # fmt: skip

        org_id = await create_org(a, "sdk.test", {"traceparent": TRACEPARENT})

        (server,) = [
            s
            for s in spans_a.get_finished_spans()
            if s.kind is SpanKind.SERVER and s.name == "POST /organizations"
        ]
        assert hexid(server.context.trace_id, 32) == TRACE_ID
        assert server.parent is not None and hexid(server.parent.span_id, 16) == SPAN_ID
        server_span_id = hexid(server.context.span_id, 16)
        row = await outbox_row(a, org_id)
        assert row["headers"]["traceparent"] == f"00-{TRACE_ID}-{server_span_id}-01"
        assert row["payload"]["trace_id"] == TRACE_ID

        def handler_spans() -> list[ReadableSpan]:
            return [
                s
                for s in spans_b.get_finished_spans()
                if s.kind is SpanKind.CONSUMER
                and s.attributes is not None
                and s.attributes.get("bridge.resource_id") == str(org_id)
            ]

        async def handled() -> list[ReadableSpan]:
            return handler_spans()

        (consumer,) = await eventually(handled, what="B's handler span")
        assert consumer.name == "organization.created process"
        assert hexid(consumer.context.trace_id, 32) == TRACE_ID
        assert consumer.parent is not None
        assert hexid(consumer.parent.span_id, 16) == server_span_id  # A's request span
        assert consumer.parent.is_remote
        await applied(b, org_id)
        # B applied the change without publishing it again: no outbox row there.
        async with b.state.engine.connect() as conn:
            count = await conn.scalar(text("SELECT count(*) FROM bridge_outbox"))
        assert count == 0
