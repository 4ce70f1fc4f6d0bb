"""Foundation against a real nats-server: dedup, provisioning units, verify/apply."""

from __future__ import annotations

import asyncio
import json

import pytest
from nats.aio.client import Client

from bridge.config import BridgeConfig
from bridge.envelope import Envelope
from bridge.errors import ConnectionError, DriftError, MissingConsumerError, MissingStreamError
from bridge.provisioning.provisioner import Provisioner
from bridge.provisioning.specs import consumer_spec, stream_spec
from bridge.testing import NatsServer, free_port
from bridge.transport.connection import Connection
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


async def provision(nc: Client, cfg: BridgeConfig) -> Provisioner:
    prov = Provisioner(JetStreamApi(nc))
    await prov.apply(stream_spec(cfg), [consumer_spec(cfg)])
    return prov


async def test_same_envelope_twice_is_stored_once(
    nc: Client, nats_server: NatsServer, unique: str
) -> None:
    cfg = config(nats_server, unique)
    await provision(nc, cfg)
    publisher = Publisher(nc.jetstream(), stream=cfg.stream_name)
    env = Envelope(
        event_type="organization.created",
        producer=cfg.app_name,
        resource_type="organization",
        resource_id="1",
        payload={"n": 1},
    )
    first = await publisher.publish(cfg.subjects.publish, env)
    second = await publisher.publish(cfg.subjects.publish, env)
    assert not first.duplicate
    assert second.duplicate and second.seq == first.seq
    info = await nc.jetstream().stream_info(cfg.stream_name)
    assert info.state.messages == 1


async def test_consumer_backoff_and_ack_wait_read_back_in_seconds(
    nc: Client, nats_server: NatsServer, unique: str
) -> None:
    cfg = config(nats_server, unique, ack_wait=2.0, backoff=(2.0, 5.0, 15.0))
    await provision(nc, cfg)
    raw = await nc.request(f"$JS.API.CONSUMER.INFO.{cfg.stream_name}.{cfg.subjects.durable}", b"")
    server_cfg = json.loads(raw.data)["config"]
    # JetStream JSON is in nanoseconds; the Ruby gem sent seconds here.
    assert server_cfg["ack_wait"] == 2_000_000_000
    assert server_cfg["backoff"] == [2_000_000_000, 5_000_000_000, 15_000_000_000]
    info = await nc.jetstream().consumer_info(cfg.stream_name, cfg.subjects.durable)
    assert info.config.ack_wait == 2.0
    assert info.config.backoff == [2.0, 5.0, 15.0]
    assert info.config.max_deliver == -1  # unlimited: the bridge counts the attempts


async def test_verify_names_missing_stream_and_consumer(
    nc: Client, nats_server: NatsServer, unique: str
) -> None:
    cfg = config(nats_server, unique)
    prov = Provisioner(JetStreamApi(nc))
    with pytest.raises(MissingStreamError, match=cfg.stream_name):
        await prov.verify(stream_spec(cfg), [consumer_spec(cfg)])
    await prov.apply(stream_spec(cfg), [])
    with pytest.raises(MissingConsumerError, match=cfg.subjects.durable):
        await prov.verify(stream_spec(cfg), [consumer_spec(cfg)])


async def test_verify_names_drifted_consumer_and_apply_is_idempotent(
    nc: Client, nats_server: NatsServer, unique: str
) -> None:
    cfg = config(nats_server, unique)
    prov = await provision(nc, cfg)
    again = await prov.apply(stream_spec(cfg), [consumer_spec(cfg)])
    assert again.empty, again.describe()
    drifted = cfg.with_(ack_wait=45.0)
    with pytest.raises(DriftError, match=r"a\w+-workers.*ack_wait"):
        await prov.verify(stream_spec(drifted), [consumer_spec(drifted)])


async def test_apply_keeps_operator_set_fields(
    nc: Client, nats_server: NatsServer, unique: str
) -> None:
    cfg = config(nats_server, unique)
    prov = await provision(nc, cfg)
    api = JetStreamApi(nc)
    stream = (await api.stream_info(cfg.stream_name))["config"]
    stream["max_msgs"] = 12345
    stream["subjects"].append(f"extra{unique}.events")
    await api.save_stream(stream, create=False)
    consumer = (await api.consumer_info(cfg.stream_name, cfg.subjects.durable))["config"]
    consumer["max_ack_pending"] = 77
    consumer["description"] = "set by ops"
    await api.save_consumer(cfg.stream_name, consumer, action="update")

    changed = cfg.with_(ack_wait=45.0, duplicate_window=60.0)
    plan = await prov.apply(stream_spec(changed), [consumer_spec(changed)])
    assert {c.kind for c in plan.changes} == {"update_stream", "update_consumer"}
    stream = (await api.stream_info(cfg.stream_name))["config"]
    consumer = (await api.consumer_info(cfg.stream_name, cfg.subjects.durable))["config"]
    assert stream["max_msgs"] == 12345 and f"extra{unique}.events" in stream["subjects"]
    assert consumer["max_ack_pending"] == 77 and consumer["description"] == "set by ops"
    assert consumer["ack_wait"] == 45_000_000_000
    await prov.verify(stream_spec(changed), [consumer_spec(changed)])


async def test_switching_to_push_recreates_consumer(
    nc: Client, nats_server: NatsServer, unique: str
) -> None:
    cfg = config(nats_server, unique)
    prov = await provision(nc, cfg)
    push = cfg.with_(consumer_mode="push")
    plan = await prov.apply(stream_spec(push), [consumer_spec(push)])
    assert [c.kind for c in plan.changes] == ["recreate_consumer"]
    info = await nc.jetstream().consumer_info(cfg.stream_name, cfg.subjects.durable)
    assert info.config.deliver_subject == push.deliver_subject
    assert info.config.deliver_group == push.deliver_group


async def test_connection_reports_state_and_survives_restart(unique: str) -> None:
    server = NatsServer().start()
    try:
        cfg = BridgeConfig(
            app_name="a", destination_app="b", nats_urls=(server.url,), reconnect_wait=0.1
        )
        conn = Connection(cfg)
        await conn.start(timeout=5)
        assert conn.snapshot()["connected"]
        server.stop()

        for _ in range(100):
            if not conn.is_connected:
                break
            await asyncio.sleep(0.05)
        assert conn.snapshot()["state"] == "reconnecting"
        server.start()
        for _ in range(200):
            if conn.is_connected:
                break
            await asyncio.sleep(0.05)
        assert conn.is_connected and conn.reconnects >= 1
        await conn.stop(timeout=2)
        assert conn.snapshot()["state"] == "closed"
    finally:
        server.cleanup()


async def test_connect_timeout_names_the_server() -> None:
    cfg = BridgeConfig(
        app_name="a",
        destination_app="b",
        nats_urls=(f"nats://user:pw@127.0.0.1:{free_port()}",),
        reconnect_wait=0.1,
        connect_timeout=0.2,
    )
    with pytest.raises(ConnectionError, match=r"127\.0\.0\.1") as info:
        await Connection(cfg).start(timeout=0.5)
    assert "pw" not in str(info.value)
