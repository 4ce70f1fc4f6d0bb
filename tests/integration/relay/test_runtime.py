"""Two Bridges in one process (A and B, two databases, one real nats-server)."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from bridge import schema
from bridge.config import BridgeConfig, ConsumerOptions, RelayOptions
from bridge.envelope import Envelope
from bridge.errors import MissingStreamError, Reject
from bridge.routing.middleware import HandlerCall, Next
from bridge.routing.router import Router
from bridge.runtime import Bridge
from bridge.testing import NatsServer

from .conftest import Widget


def side(nats: NatsServer, unique: str, app: str, peer: str, **kw: object) -> BridgeConfig:
    return BridgeConfig(
        app_name=f"{app}{unique}",
        destination_app=f"{peer}{unique}",
        stream_name=f"s{unique}",
        nats_urls=(nats.url,),
        backoff=(0.2, 0.5),
        max_deliver=3,
        ack_wait=5.0,
        relay=RelayOptions(poll_interval=0.2, lease=5.0, retry_base=0.05, retry_max=0.5),
        consumer=ConsumerOptions(fetch_timeout=0.3),
        **kw,  # type: ignore[arg-type]
    )


def widget_router() -> Router:
    router = Router()

    async def apply(session: AsyncSession, envelope: Envelope) -> None:
        row = await session.get(Widget, envelope.resource_id)
        if envelope.action == "deleted":
            if row is not None:
                await session.delete(row)
            return
        if row is None:
            row = Widget(id=envelope.resource_id, name=envelope.payload["name"])
            session.add(row)
        row.name = envelope.payload["name"]

    router.on_resource("widget", apply)
    return router


async def wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def test_change_in_a_is_applied_in_b_once_without_echo(
    nats_server: NatsServer, unique: str, engines: tuple[AsyncEngine, AsyncEngine]
) -> None:
    eng_a, eng_b = engines
    a = Bridge(side(nats_server, unique, "a", "b"), engine=eng_a, router=widget_router())
    b = Bridge(side(nats_server, unique, "b", "a"), engine=eng_b, router=widget_router())
    async with a, b:
        async with a.session_factory.begin() as session:
            widget = Widget(name="hello")
            session.add(widget)
        widget_id = widget.id

        async def in_b() -> bool:
            async with b.session_factory() as session:
                row = await session.get(Widget, widget_id)
                return row is not None and row.name == "hello"

        await wait_for(in_b)
        health = await b.health()
        assert health["status"] == "ok" and health["nats"]["connected"]
        status_b = await b.status()
        assert status_b["inbox"]["processed"] == 1
        assert status_b["dead_letters"] == 0
        await asyncio.sleep(0.5)  # give an echo time to appear, if there were one
        status_a = await a.status()
        assert status_a["outbox"]["sent"] == 1 and status_a["outbox"]["pending"] == 0
        assert status_b["outbox"]["sent"] == 0 and status_b["outbox"]["pending"] == 0
        async with eng_b.connect() as conn:
            rows = (await conn.execute(select(schema.outbox))).all()
        assert rows == []  # B applied it with publishing suppressed: no echo


async def test_router_middleware_wraps_every_handler_call_of_a_running_bridge(
    nats_server: NatsServer, unique: str, engines: tuple[AsyncEngine, AsyncEngine]
) -> None:
    """A middleware registered with Router.use runs inside the bridge's own (metrics,
    tracing) around each handler call, in the inbox transaction; a Reject it raises
    dead-letters the delivery like a handler's would."""
    eng_a, eng_b = engines
    seen: list[tuple[str, bool, bool]] = []

    async def guard(call: HandlerCall, call_next: Next) -> None:
        envelope = call.envelopes[0]
        seen.append((envelope.payload["name"], call.batch, call.session.in_transaction()))
        if envelope.payload["name"] == "forbidden":
            raise Reject("names are checked before any handler", reason="forbidden_name")
        await call_next()

    router_b = widget_router()
    router_b.use(guard)
    a = Bridge(side(nats_server, unique, "a", "b"), engine=eng_a, router=widget_router())
    b = Bridge(side(nats_server, unique, "b", "a"), engine=eng_b, router=router_b)
    async with a, b:
        async with a.session_factory.begin() as session:
            session.add_all([Widget(name="fine"), Widget(name="forbidden")])

        async def settled() -> bool:
            status = await b.status()
            return status["inbox"]["processed"] == 1 and status["dead_letters"] == 1

        await wait_for(settled)
        async with eng_b.connect() as conn:
            names = (await conn.execute(select(Widget.name))).scalars().all()
        assert names == ["fine"]
        # "fine" may run twice (the inbox re-runs a batch after a rollback); the guard's
        # Reject decides "forbidden" once, it is not run again
        assert set(seen) == {("fine", False, True), ("forbidden", False, True)}
        assert seen.count(("forbidden", False, True)) == 1
        timed = b.metrics.registry.get_sample_value(
            "bridge_handler_duration_seconds_count",
            {"event_type": "widget.created", "result": "error"},
        )
        assert timed == 1  # the bridge's metrics middleware saw the guard's Reject


async def test_verify_mode_fails_fast_naming_the_stream(
    nats_server: NatsServer, unique: str, engines: tuple[AsyncEngine, AsyncEngine]
) -> None:
    cfg = side(nats_server, unique, "a", "b", auto_provision=False)
    bridge = Bridge(cfg, engine=engines[0])
    started = time.monotonic()
    with pytest.raises(MissingStreamError, match=cfg.stream_name):
        await bridge.start(timeout=5)
    assert time.monotonic() - started < 10
    assert bridge.connection.snapshot()["state"] == "closed"


async def test_stop_is_one_deadline_for_all_parts(
    nats_server: NatsServer, unique: str, engine: AsyncEngine
) -> None:
    """``Bridge.stop(timeout)`` ends within ``timeout`` even when several parts hang:
    a handler that never returns (the consumer waits for it) and a relay whose claim
    waits for a table lock.  Each part used to get the whole timeout in turn."""
    started = asyncio.Event()

    async def hang(session: AsyncSession, envelope: Envelope) -> None:
        started.set()
        await asyncio.sleep(3600)

    router = Router()
    router.on_resource("widget", hang)
    cfg = side(nats_server, unique, "b", "a")
    bridge = Bridge(cfg, engine=engine, router=router)
    await bridge.start()
    lock = await engine.connect()
    try:
        envelope = Envelope(
            event_type="widget.created",
            producer=cfg.destination_app,
            resource_type="widget",
            resource_id="w1",
            payload={"name": "stuck"},
        )
        assert bridge.publisher is not None
        await bridge.publisher.publish(cfg.subjects.consume, envelope)
        await asyncio.wait_for(started.wait(), 10)
        # The relay's next claim waits for this lock until its lease-long bound.
        await lock.execute(text("LOCK TABLE bridge_outbox IN ACCESS EXCLUSIVE MODE"))
        await asyncio.sleep(cfg.relay.poll_interval * 3)  # a claim is waiting now
        began = time.monotonic()
        await bridge.stop(timeout=3.0)
        elapsed = time.monotonic() - began
    finally:
        await lock.rollback()
        await lock.close()
    assert elapsed < 3.0 + 1.0, f"stop took {elapsed:.1f}s for a 3s deadline"


async def test_a_slow_management_reply_does_not_turn_the_status_reads_off(
    engine: AsyncEngine, nats_server: NatsServer, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A management request that gets no answer within its 1 s (a busy server) used to be
    # taken for a permission denial: the dead-letter count and consumer lag were gone from
    # /sync_status and /metrics for the rest of the bridge's life.  Only the server's
    # "Permissions Violation" turns them off.
    from bridge.errors import PermissionDeniedError
    from bridge.observability import status as status_module

    bridge = Bridge(side(nats_server, unique, "a", "b"), engine=engine, router=widget_router())
    await bridge.start()
    try:
        assert await bridge.observed.dead_letter_count() == 0
        real = status_module.JetStreamApi.request

        async def slow(self: object, subject: str, body: object = None) -> dict[str, object]:
            raise PermissionDeniedError(f"no answer to $JS.API.{subject} within 1.0s")

        monkeypatch.setattr(status_module.JetStreamApi, "request", slow)
        assert await bridge.observed.dead_letter_count() is None  # this read: unknown
        monkeypatch.setattr(status_module.JetStreamApi, "request", real)
        assert bridge.observed.management_allowed is not False
        assert await bridge.observed.dead_letter_count() == 0  # the next read works again
    finally:
        await bridge.stop(5.0)
