"""A delivery whose attempts run out is always dead-lettered (or applied), in every mode.

The server redelivers without limit; the consumer allows ``max_deliver`` handler
runs and dead-letters a later delivery (``max_deliver_exceeded``) without running
the handler.  So a process killed during the last attempt, or during that
delivery's dead-letter publish, leads to one more delivery, which settles it —
with nothing but the app user's least-privilege permissions (no advisory, no
direct get).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from consumer_support import (
    SpyDelivery,
    Stack,
    build_stack,
    close_stack,
    make_config,
    org_event,
    record_effect,
    wait_until,
)
from sqlalchemy.ext.asyncio import AsyncSession

from bridge.config import BridgeConfig, Credentials
from bridge.envelope import Envelope
from bridge.errors import DriftError, Retry
from bridge.provisioning.permissions import render_authorization
from bridge.provisioning.provisioner import Provisioner
from bridge.provisioning.specs import consumer_spec, stream_spec
from bridge.routing.dlq import DeadLetters
from bridge.runtime import make_consumer
from bridge.testing import NatsServer
from bridge.transport.connection import Connection
from bridge.transport.delivery import NatsDelivery, Outcome
from bridge.transport.jsapi import JetStreamApi
from bridge.transport.publisher import Publisher

ADMIN = Credentials(user="admin", password="adminpw")


@pytest.fixture
async def restricted(
    request: pytest.FixtureRequest, unique: str, database_url: str
) -> AsyncIterator[Stack]:
    """A least-privilege app user (the generated set) on its own server; admin provisions."""
    probe = make_config(
        "nats://127.0.0.1:4222",
        unique,
        auto_provision=False,
        consumer_mode=request.param,
        max_deliver=2,
        ack_wait=1.0,
        backoff=(0.2,),
    )
    auth = render_authorization(
        [probe], admin_user="admin", admin_password="adminpw", app_passwords={probe.app_name: "pw"}
    )
    server = NatsServer(config=auth).start()
    try:
        cfg = probe.with_(
            nats_urls=(server.url,), credentials=Credentials(user=probe.app_name, password="pw")
        )
        stack = await build_stack(cfg, database_url, admin=ADMIN)
        try:
            yield stack
        finally:
            await close_stack(stack)
    finally:
        server.cleanup()


@pytest.mark.parametrize("restricted", ["pull", "push"], indirect=True)
async def test_consumer_killed_on_the_last_attempt_ends_dead_lettered(restricted: Stack) -> None:
    stack, cfg = restricted, restricted.cfg
    calls = 0
    on_last_attempt = asyncio.Event()

    async def fails_then_hangs(session: AsyncSession, env: Envelope) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise Retry("transient", delay=0.2)
        on_last_attempt.set()
        await asyncio.Event().wait()  # the process dies in here

    stack.router.on("organization.created", fails_then_hangs)
    doomed = Connection(cfg)
    await doomed.start(timeout=5)
    consumer = make_consumer(cfg, doomed, stack.processor_for())
    await consumer.start()
    event = org_event(cfg)
    seq = (await stack.publish(event)).seq
    await asyncio.wait_for(on_last_attempt.wait(), 10)
    # The kill: the connection goes (no ack, no more in-progress), the worker is cancelled.
    await doomed.nc.close()
    await consumer.stop(timeout=0.2)

    survivor = await stack.start_consumer()
    assert stack.admin_dead_letters is not None
    dead_letters = stack.admin_dead_letters

    async def dead_lettered() -> bool:
        # the letter is stored first, then the inbox record marked, then the delivery termed
        return (
            bool(await dead_letters.list())
            and await stack.scalar("SELECT status FROM bridge_inbox") == "dead_lettered"
            and survivor.stats().outcomes == {"dead_lettered": 1}
        )

    await wait_until(dead_lettered, timeout=15)
    [letter] = await dead_letters.list()
    assert (letter.reason, letter.original_seq) == ("max_deliver_exceeded", seq)
    assert letter.deliveries == cfg.max_deliver + 1  # the reserved delivery
    assert letter.envelope().event_id == event.event_id
    assert calls == 2  # the reserved delivery did not run the handler again
    assert list(stack.connection.permission_errors) == []


async def _fetch_one(stack: Stack, sub: object, num_delivered: int) -> NatsDelivery:
    [msg] = await sub.fetch(1, timeout=5)  # type: ignore[attr-defined]
    delivery = NatsDelivery(msg)
    assert delivery.num_delivered == num_delivered
    return delivery


@pytest.fixture
async def once(nats_server: NatsServer, unique: str, database_url: str) -> AsyncIterator[Stack]:
    """max_deliver=1: the first delivery is the last attempt, the second the reserved one."""
    cfg = make_config(nats_server.url, unique, max_deliver=1, backoff=(0.1,), ack_wait=1.0)
    stack = await build_stack(cfg, database_url)
    yield stack
    await close_stack(stack)


async def test_a_failed_dead_letter_publish_on_the_reserved_delivery_comes_back(
    once: Stack,
) -> None:
    stack, cfg = once, once.cfg
    calls = 0

    async def counted(session: AsyncSession, env: Envelope) -> None:
        nonlocal calls
        calls += 1
        await record_effect(session, env)

    stack.router.on("organization.created", counted)
    await stack.publish(org_event(cfg))
    sub = await stack.pull_sub()
    first = await _fetch_one(stack, sub, 1)
    await first.nak()  # the last attempt never finished (as after a kill)
    # The reserved delivery: its dead-letter publish fails (the DLQ subject is in no
    # stream, like a kill before the PubAck), so it is NAKed ...
    broken = stack.processor_for()
    nowhere = cfg.with_(app_name=f"{cfg.app_name}x")
    broken._dead_letters = DeadLetters(
        nowhere, stack.connection.js, Publisher(stack.connection.js, stream=None, timeout=1.0)
    )
    reserved = SpyDelivery(await _fetch_one(stack, sub, 2))
    assert await broken.process_batch([reserved]) == [Outcome.RETRIED]
    assert reserved.kinds == ["nak"]
    # ... and delivered once more, and dead-lettered then.
    again = SpyDelivery(await _fetch_one(stack, sub, 3))
    assert await stack.processor.process_batch([again]) == [Outcome.DEAD_LETTERED]
    assert again.kinds == ["term"]
    [letter] = await stack.dead_letters.list()
    assert (letter.reason, letter.deliveries) == ("max_deliver_exceeded", 3)
    assert calls == 0 and await stack.effects() == 0


async def test_reserved_delivery_of_an_applied_event_is_acked_as_a_duplicate(
    once: Stack,
) -> None:
    stack, cfg = once, once.cfg
    stack.router.on("organization.created", record_effect)
    await stack.publish(org_event(cfg))
    sub = await stack.pull_sub()
    # Applied and committed, but the ack is lost (the process died right after the commit).
    lost_ack = SpyDelivery(await _fetch_one(stack, sub, 1), drop_ack=True)
    assert await stack.processor.process_batch([lost_ack]) == [Outcome.ACKED]
    reserved = SpyDelivery(await _fetch_one(stack, sub, 2))  # after ack_wait
    assert await stack.processor.process_batch([reserved]) == [Outcome.DUPLICATE]
    assert reserved.kinds == ["ack"]
    assert await stack.effects() == 1
    assert await stack.dead_letters.list() == []


async def test_consumers_provisioned_with_a_finite_max_deliver_are_drift(
    stack: Stack, cfg: BridgeConfig
) -> None:
    """A consumer created before the reserved delivery existed (server-side limit =
    max_deliver) would abandon a killed last attempt: verify names it, apply fixes it."""
    api = JetStreamApi(stack.connection.nc)
    current = (await api.consumer_info(cfg.stream_name, cfg.subjects.durable))["config"]
    assert current["max_deliver"] == -1  # the server redelivers until the bridge settles it
    await api.save_consumer(
        cfg.stream_name, {**current, "max_deliver": cfg.max_deliver}, action="update"
    )
    provisioner = Provisioner(api)
    with pytest.raises(DriftError, match=r"max_deliver: 3 -> -1"):
        await provisioner.verify(stream_spec(cfg), [consumer_spec(cfg)])
    plan = await provisioner.apply(stream_spec(cfg), [consumer_spec(cfg)])
    assert [c.kind for c in plan.changes] == ["update_consumer"]
    info = await api.consumer_info(cfg.stream_name, cfg.subjects.durable)
    assert info["config"]["max_deliver"] == -1
    await provisioner.verify(stream_spec(cfg), [consumer_spec(cfg)])


def test_without_dead_letters_the_server_keeps_the_limit(cfg: BridgeConfig) -> None:
    """No DLQ: nothing can settle a reserved delivery, so the server stops after
    max_deliver as before (the message stays in the stream)."""
    assert consumer_spec(cfg).max_deliver == -1
    assert consumer_spec(cfg.with_(use_dlq=False)).max_deliver == cfg.max_deliver
