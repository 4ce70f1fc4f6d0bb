"""PushConsumer: a plain queue subscription, including an app user without $JS.API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from consumer_support import (
    Stack,
    build_stack,
    close_stack,
    make_config,
    org_event,
    record_effect,
    wait_until,
)
from sqlalchemy.ext.asyncio import AsyncSession

from bridge._support.durations import to_nanos
from bridge.config import BridgeConfig, Credentials
from bridge.consumer.push import PushConsumer
from bridge.envelope import Envelope
from bridge.errors import PermissionDeniedError, Reject
from bridge.provisioning.specs import consumer_spec
from bridge.testing import NatsServer
from bridge.transport.jsapi import JetStreamApi


@pytest.fixture
async def push(nats_server: NatsServer, unique: str, database_url: str) -> AsyncIterator[Stack]:
    cfg = make_config(nats_server.url, unique, consumer_mode="push")
    stack = await build_stack(cfg, database_url)
    yield stack
    await close_stack(stack)


async def test_push_applies_deliveries_and_answers_flow_control(push: Stack) -> None:
    push.router.on("organization.created", record_effect)
    consumer = await push.start_consumer()
    assert isinstance(consumer, PushConsumer)
    padding = "x" * 1500
    total = 1500
    # pipelined publish: enough pending bytes for the server to ask for flow control
    results = await asyncio.gather(
        *(push.publish(org_event(push.cfg, f"r{i}", pad=padding)) for i in range(total))
    )
    assert len({r.seq for r in results}) == total

    async def all_applied() -> bool:
        return await push.effects() == total

    await wait_until(all_applied, timeout=60, interval=0.2)
    assert consumer.flow_control_replies > 0
    assert consumer.stats().outcomes == {"acked": total}
    assert (await push.processor.counts()).processed == total


async def test_push_ignores_heartbeats_and_applies_redeliveries(push: Stack) -> None:
    cfg = push.cfg
    # the same consumer with a short idle heartbeat, so the test sees some
    spec = consumer_spec(cfg).to_api()
    spec["idle_heartbeat"] = to_nanos(0.2)
    api = JetStreamApi(push.connection.nc)
    await api.delete_consumer(cfg.stream_name, cfg.subjects.durable)
    await api.save_consumer(cfg.stream_name, spec, action="create")
    attempts = 0

    async def flaky(session: AsyncSession, env: Envelope) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise RuntimeError("first attempt fails")
        await record_effect(session, env)

    push.router.on("organization.created", flaky)
    consumer = await push.start_consumer()
    assert isinstance(consumer, PushConsumer)
    await push.publish(org_event(cfg))

    async def applied_and_idle() -> bool:
        return await push.effects() == 1 and consumer.heartbeats >= 2

    await wait_until(applied_and_idle, timeout=10)
    stats = consumer.stats()
    assert stats.outcomes == {"retried": 1, "acked": 1}
    assert stats.redeliveries == 1


RESTRICTED = """
authorization {{
  users = [
    {{ user: "admin", password: "adminpw" }},
    {{ user: "{app}", password: "apppw",
      permissions: {{
        publish: {{ allow: ["{publish}", "{dlq}", "$JS.ACK.>", "$JS.FC.>"] }},
        subscribe: {{ allow: ["{deliver}", "{inbox}.>"] }}
      }} }}
  ]
}}
"""


async def test_push_with_an_app_user_that_has_no_js_api_permission(
    unique: str, database_url: str
) -> None:
    probe = make_config("nats://127.0.0.1:4222", unique)
    subjects = probe.subjects
    server = NatsServer(
        config=RESTRICTED.format(
            app=probe.app_name,
            publish=subjects.publish,
            dlq=subjects.dlq,
            deliver=probe.deliver_subject,
            inbox=probe.inbox_prefix,  # the app's own reply inbox, _INBOX_<app>
        )
    ).start()
    try:
        cfg: BridgeConfig = make_config(
            server.url,
            unique,
            consumer_mode="push",
            auto_provision=False,
            credentials=Credentials(user=probe.app_name, password="apppw"),
        )
        stack = await build_stack(
            cfg, database_url, admin=Credentials(user="admin", password="adminpw")
        )
        try:
            await _exercise_restricted(stack)
        finally:
            await close_stack(stack)
    finally:
        server.cleanup()


async def _exercise_restricted(stack: Stack) -> None:
    cfg = stack.cfg

    async def handler(session: AsyncSession, env: Envelope) -> None:
        if env.payload.get("reject"):
            raise Reject("not acceptable")
        await record_effect(session, env)

    stack.router.on("organization.created", handler)
    consumer = await stack.start_consumer()
    assert isinstance(consumer, PushConsumer)
    for i in range(5):
        await stack.publish(org_event(cfg, f"r{i}"))
    rejected = org_event(cfg, "bad", reject=True)
    await stack.publish(rejected)

    async def settled() -> bool:
        return consumer.stats().outcomes == {"acked": 5, "dead_lettered": 1}

    await wait_until(settled, timeout=15)
    assert await stack.effects() == 5
    assert stack.admin_dead_letters is not None
    [letter] = await stack.admin_dead_letters.list()  # the app user published it
    assert letter.reason == "rejected" and letter.envelope().event_id == rejected.event_id
    assert list(stack.connection.permission_errors) == []
    # and the app user really has no JetStream API access
    with pytest.raises(PermissionDeniedError):
        await JetStreamApi(stack.connection.nc, timeout=1.0).stream_info(cfg.stream_name)
