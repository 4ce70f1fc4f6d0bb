"""Restrictive mode against a real nats-server running the generated config:
app users can do their work with the least-privilege sets and nothing else."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from bridge.config import BridgeConfig
from bridge.envelope import Envelope
from bridge.errors import PermissionDeniedError, PublishError
from bridge.provisioning.provisioner import Provisioner
from bridge.provisioning.specs import consumer_spec, stream_spec
from bridge.testing import NatsServer, free_port
from bridge.transport.connection import Connection
from bridge.transport.jsapi import JetStreamApi
from bridge.transport.publisher import Publisher
from provisioner.stack import RestrictiveStack, write_restrictive_stack

Modes = dict[str, str]


class Env:
    """One stack: a real nats-server with the generated config, admin client, app connections."""

    def __init__(self, stack: RestrictiveStack, server: NatsServer, admin: Client) -> None:
        self.stack = stack
        self.server = server
        self.admin = admin
        self.connections: list[Connection] = []
        self.a, self.b = stack.pair

    def cfg(self, app: str) -> BridgeConfig:
        return self.stack.app_config(app)

    async def provision(self, *apps: str) -> None:
        cfgs = [self.cfg(app) for app in apps]
        await Provisioner(JetStreamApi(self.admin)).apply(
            stream_spec(self.cfg(self.a)), [consumer_spec(c) for c in cfgs]
        )

    async def connect(self, app: str, config: BridgeConfig | None = None) -> Connection:
        conn = Connection(config or self.cfg(app))
        await conn.start(timeout=5)
        self.connections.append(conn)
        return conn


@pytest.fixture
async def envs(tmp_path: Path, unique: str) -> AsyncIterator[Callable[..., Awaitable[Env]]]:
    """Factory of stacks; modes by role: {"a": "pull", "b": "push"}."""
    made: list[Env] = []

    async def make(modes: Modes | None = None) -> Env:
        a, b = f"a{unique}", f"b{unique}"
        named = {a: (modes or {}).get("a", "pull"), b: (modes or {}).get("b", "pull")}
        stack = write_restrictive_stack(
            tmp_path / f"stack{len(made)}",
            apps=(a, b),
            consumer_modes=named,
            port=free_port(),
            stream_name=f"s{unique}",
        )
        server = NatsServer(config=stack.authorization, port=stack.port).start()
        admin = await nats.connect(server.url, user=stack.admin.user, password=stack.admin.password)
        env = Env(stack, server, admin)
        made.append(env)
        return env

    yield make
    for env in made:
        for conn in env.connections:
            await conn.stop(timeout=2)
        await env.admin.close()
        env.server.cleanup()


EnvFactory = Callable[..., Awaitable[Env]]


def envelope(producer: str, n: int = 1) -> Envelope:
    return Envelope(
        event_type="organization.created",
        producer=producer,
        resource_type="organization",
        resource_id=str(n),
        payload={"n": n},
    )


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def violation(conn: Connection, text: str, timeout: float = 3.0) -> None:
    await conn.nc.flush()

    async def seen() -> bool:
        return any(text.lower() in e.lower() for e in conn.permission_errors)

    try:
        await wait_for(seen, timeout)
    except AssertionError:
        raise AssertionError(f"no violation {text!r} in {list(conn.permission_errors)}") from None


# -- tests --------------------------------------------------------------------------------
async def test_app_users_cannot_create_or_delete_streams_or_consumers(envs: EnvFactory) -> None:
    env = await envs({"a": "pull", "b": "push"})
    await env.provision(env.a, env.b)
    for app in (env.a, env.b):
        conn = await env.connect(app)
        api = JetStreamApi(conn.nc, timeout=0.5)
        spec = stream_spec(env.cfg(app))
        with pytest.raises(PermissionDeniedError, match=r"STREAM\.CREATE"):
            await api.save_stream({**spec.to_api(), "name": f"other{app}"}, create=True)
        with pytest.raises(PermissionDeniedError, match=r"STREAM\.DELETE"):
            await api.delete_stream(spec.name)
        with pytest.raises(PermissionDeniedError, match=r"CONSUMER\.DELETE"):
            await api.delete_consumer(spec.name, env.cfg(app).subjects.durable)
        with pytest.raises(PermissionDeniedError, match=r"CONSUMER\.CREATE"):
            await api.save_consumer(
                spec.name,
                {**consumer_spec(env.cfg(app)).to_api(), "durable_name": "x"},
                action="create",
            )
        await violation(conn, "$JS.API.STREAM.CREATE")
    # Nothing changed: the admin still sees the stream and exactly the two consumers.
    admin_api = JetStreamApi(env.admin)
    info = await admin_api.stream_info(env.stack.stream_name)
    assert info["state"]["consumer_count"] == 2


async def test_pull_app_publishes_with_puback_then_fetches_and_acks(envs: EnvFactory) -> None:
    env = await envs({"a": "pull", "b": "push"})
    await env.provision(env.a, env.b)
    a = await env.connect(env.a)
    b = await env.connect(env.b)
    cfg_a = env.cfg(env.a)
    ack = await Publisher(a.js, stream=cfg_a.stream_name).publish(
        cfg_a.subjects.publish, envelope(env.a)
    )
    assert ack.seq >= 1 and not ack.duplicate
    dlq = await Publisher(a.js, stream=cfg_a.stream_name).publish(
        cfg_a.subjects.dlq, envelope(env.a, 2)
    )
    assert dlq.seq > ack.seq
    # B (push) publishes towards A; A fetches from its own durable and acks.
    cfg_b = env.cfg(env.b)
    await Publisher(b.js, stream=cfg_b.stream_name).publish(cfg_b.subjects.publish, envelope(env.b))
    sub = await a.js.pull_subscribe_bind(cfg_a.subjects.durable, stream=cfg_a.stream_name)
    msgs = await sub.fetch(1, timeout=3)
    assert Envelope.from_bytes(msgs[0].data, msgs[0].headers).producer == env.b
    await msgs[0].ack_sync(timeout=3)
    info = await env.admin.jetstream().consumer_info(cfg_a.stream_name, cfg_a.subjects.durable)
    assert info.num_ack_pending == 0 and info.num_pending == 0
    assert info.ack_floor.stream_seq >= 1
    assert not a.permission_errors and not b.permission_errors


async def test_push_app_receives_on_queue_group_answers_flow_control_and_acks(
    envs: EnvFactory,
) -> None:
    env = await envs({"a": "pull", "b": "push"})
    await env.provision(env.a, env.b)
    b = await env.connect(env.b)
    cfg_b = env.cfg(env.b)
    cfg_a = env.cfg(env.a)
    # Large messages make the server ask for flow control.
    count, big = 8, b"x" * 256_000
    for _ in range(count):
        await env.admin.jetstream().publish(cfg_a.subjects.publish, big)
    received: list[Msg] = []
    flow_control = 0

    async def on_message(msg: Msg) -> None:
        nonlocal flow_control
        status = (msg.headers or {}).get("Status")
        if status == "100" and msg.reply:
            flow_control += 1
            await b.nc.publish(msg.reply, b"")
        elif status is None:
            received.append(msg)
            await msg.ack()

    await b.nc.subscribe(cfg_b.deliver_subject, queue=cfg_b.deliver_group, cb=on_message)

    async def all_acked() -> bool:
        info = await env.admin.jetstream().consumer_info(cfg_b.stream_name, cfg_b.subjects.durable)
        return len(received) >= count and info.num_ack_pending == 0 and info.num_pending == 0

    await wait_for(all_acked, 10)
    assert flow_control >= 1
    assert {m.subject for m in received} == {cfg_a.subjects.publish}
    # B also publishes its own changes and gets the PubAck.
    ack = await Publisher(b.js, stream=cfg_b.stream_name).publish(
        cfg_b.subjects.publish, envelope(env.b)
    )
    assert ack.seq == count + 1
    await b.nc.flush()
    assert not b.permission_errors


async def test_apps_cannot_use_each_others_consumer_or_subject(envs: EnvFactory) -> None:
    env = await envs({"a": "pull", "b": "push"})
    await env.provision(env.a, env.b)
    a = await env.connect(env.a)
    b = await env.connect(env.b)
    cfg_a, cfg_b = env.cfg(env.a), env.cfg(env.b)
    # Publishing on the other side's subject is denied (no PubAck, a violation).
    with pytest.raises(PublishError):
        await Publisher(a.js, stream=cfg_a.stream_name, timeout=1).publish(
            cfg_b.subjects.publish, envelope(env.a)
        )
    await violation(a, f'publish to "{cfg_b.subjects.publish}"')
    # A may not join B's push deliver group, B may not pull from A's durable.
    await a.nc.subscribe(cfg_b.deliver_subject, queue=cfg_b.deliver_group)
    await violation(a, f'subscription to "{cfg_b.deliver_subject}"')
    sub = await b.js.pull_subscribe_bind(cfg_a.subjects.durable, stream=cfg_a.stream_name)
    with pytest.raises(Exception):
        await sub.fetch(1, timeout=1)
    await violation(b, f'publish to "$JS.API.CONSUMER.MSG.NEXT.{cfg_a.stream_name}.')
    # Each app has its own reply inbox (the default): neither can listen to the
    # other's replies, not even through the shared prefix.
    assert a.nc.new_inbox().startswith(f"_INBOX_{env.a}.")
    await b.nc.subscribe("_INBOX_" + env.a + ".>")
    await violation(b, f'subscription to "_INBOX_{env.a}.>"')
    await b.nc.subscribe("_INBOX.>")
    await violation(b, 'subscription to "_INBOX.>"')
    # The queue-group restriction holds even on B's own deliver subject.
    await b.nc.subscribe(cfg_b.deliver_subject)
    await violation(b, f'subscription to "{cfg_b.deliver_subject}"')


async def test_both_pull_apps_cannot_fetch_from_each_other(envs: EnvFactory) -> None:
    env = await envs({"a": "pull", "b": "pull"})
    await env.provision(env.a, env.b)
    a = await env.connect(env.a)
    cfg_a, cfg_b = env.cfg(env.a), env.cfg(env.b)
    await env.admin.jetstream().publish(cfg_a.subjects.publish, b"for b")
    sub = await a.js.pull_subscribe_bind(cfg_b.subjects.durable, stream=cfg_b.stream_name)
    with pytest.raises(Exception):
        await sub.fetch(1, timeout=1)
    await violation(a, f'"$JS.API.CONSUMER.MSG.NEXT.{cfg_b.stream_name}.{cfg_b.subjects.durable}"')
    info = await env.admin.jetstream().consumer_info(cfg_b.stream_name, cfg_b.subjects.durable)
    assert info.num_pending == 1 and info.delivered.consumer_seq == 0
