"""What provisioning must never do to messages: drop unconsumed ones when a size
limit is reached, or replay the stream when a consumer is re-created."""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from bridge.config import BridgeConfig
from bridge.envelope import Envelope
from bridge.errors import DriftError, PublishError
from bridge.provisioning.provisioner import Provisioner
from bridge.provisioning.specs import consumer_spec, stream_spec
from bridge.testing import NatsServer
from bridge.transport.jsapi import JetStreamApi
from bridge.transport.publisher import Publisher


def config(server: NatsServer, unique: str, **kw: object) -> BridgeConfig:
    return BridgeConfig(
        app_name=f"a{unique}",
        destination_app=f"b{unique}",
        stream_name=f"s{unique}",
        nats_urls=(server.url,),
        **kw,  # type: ignore[arg-type]
    )


def event(cfg: BridgeConfig, n: int) -> Envelope:
    return Envelope(
        event_type="organization.created",
        producer=cfg.destination_app,
        resource_type="organization",
        resource_id=str(n),
        payload={"n": n, "pad": "x" * 200},
    )


async def test_a_full_stream_refuses_new_messages_and_keeps_unconsumed_ones(
    nc: Client, nats_server: NatsServer, unique: str
) -> None:
    cfg = config(nats_server, unique, stream_max_bytes=4096)
    await Provisioner(JetStreamApi(nc)).apply(stream_spec(cfg), [consumer_spec(cfg)])
    publisher = Publisher(nc.jetstream(), stream=cfg.stream_name, timeout=2)
    stored = 0
    with pytest.raises(PublishError) as err:
        for n in range(100):  # far more than 4 KB
            await publisher.publish(cfg.subjects.consume, event(cfg, n))
            stored += 1
    # Not a rejection of this message: the relay keeps the outbox row and retries.
    assert not err.value.rejected and "maximum bytes" in str(err.value)
    info = await nc.jetstream().stream_info(cfg.stream_name)
    assert info.state.first_seq == 1 and info.state.messages == stored  # nothing dropped
    consumer = await nc.jetstream().consumer_info(cfg.stream_name, cfg.subjects.durable)
    assert consumer.num_pending == stored


async def test_a_stream_that_discards_old_messages_is_drift(
    nc: Client, nats_server: NatsServer, unique: str
) -> None:
    cfg = config(nats_server, unique)
    api = JetStreamApi(nc)
    provisioner = Provisioner(api)
    await api.save_stream({**stream_spec(cfg).to_api(), "discard": "old"}, create=True)
    with pytest.raises(DriftError, match=r"discard: 'old' -> 'new'"):
        await provisioner.verify(stream_spec(cfg))
    await provisioner.apply(stream_spec(cfg))
    assert (await api.stream_info(cfg.stream_name))["config"]["discard"] == "new"
    await provisioner.verify(stream_spec(cfg))


async def _push_received(nc: Client, cfg: BridgeConfig, api: JetStreamApi) -> list[int]:
    """Stream sequences a push consumer delivers (acked) until it has nothing pending."""
    received: list[int] = []

    async def on_message(msg: Msg) -> None:
        if msg.reply and msg.reply.startswith("$JS.ACK."):
            received.append(msg.metadata.sequence.stream)
            await msg.ack()
        elif msg.reply:  # flow control
            await nc.publish(msg.reply, b"")

    sub = await nc.subscribe(cfg.deliver_subject, queue=cfg.deliver_group, cb=on_message)
    try:
        await _until_drained(api, cfg)
    finally:
        await sub.unsubscribe()
    return sorted(received)


async def _pull_received(nc: Client, cfg: BridgeConfig, api: JetStreamApi) -> list[int]:
    sub = await nc.jetstream().pull_subscribe_bind(cfg.subjects.durable, stream=cfg.stream_name)
    received: list[int] = []
    while True:
        info = (await api.consumer_info(cfg.stream_name, cfg.subjects.durable))["num_pending"]
        if not info:
            break
        for msg in await sub.fetch(10, timeout=5):
            received.append(msg.metadata.sequence.stream)
            await msg.ack_sync()
    await _until_drained(api, cfg)
    await sub.unsubscribe()
    return sorted(received)


async def _until_drained(api: JetStreamApi, cfg: BridgeConfig, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = await api.consumer_info(cfg.stream_name, cfg.subjects.durable)
        if info["num_pending"] == 0 and info["num_ack_pending"] == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"consumer not drained: {info}")


@pytest.mark.parametrize(("before", "after"), [("pull", "push"), ("push", "pull")])
async def test_switching_consumer_mode_keeps_the_position(
    nc: Client, nats_server: NatsServer, unique: str, before: str, after: str
) -> None:
    """The re-created consumer starts after the old one's ack floor: what was acked is
    not delivered again (a replay of the whole stream), what was not is not lost."""
    old = config(nats_server, unique, consumer_mode=before)
    new = old.with_(consumer_mode=after)
    api = JetStreamApi(nc)
    provisioner = Provisioner(api)
    await provisioner.apply(stream_spec(old), [consumer_spec(old)])
    publisher = Publisher(nc.jetstream(), stream=old.stream_name)
    for n in range(1, 4):
        await publisher.publish(old.subjects.consume, event(old, n))
    receive = _pull_received if before == "pull" else _push_received
    assert await receive(nc, old, api) == [1, 2, 3]  # applied and acked
    for n in range(4, 6):  # published while (or before) the switch happens
        await publisher.publish(old.subjects.consume, event(old, n))

    plan = await provisioner.apply(stream_spec(new), [consumer_spec(new)])
    assert [c.kind for c in plan.changes] == ["recreate_consumer"]
    receive = _pull_received if after == "pull" else _push_received
    assert await receive(nc, new, api) == [4, 5]
    await provisioner.verify(stream_spec(new), [consumer_spec(new)])
