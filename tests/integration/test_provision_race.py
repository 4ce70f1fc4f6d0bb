"""Both apps of a pair provision at start, at the same moment: neither may fail.

Each app lists the stream's subjects in its own order, so the second CREATE of a
stream that appeared after its plan is refused ("already in use with a different
configuration"); apply() must plan again against the existing stream.
"""

from __future__ import annotations

import asyncio

from nats.aio.client import Client

from bridge.config import BridgeConfig
from bridge.provisioning.provisioner import Provisioner
from bridge.provisioning.specs import consumer_spec, stream_spec
from bridge.testing import NatsServer
from bridge.transport.jsapi import JetStreamApi


async def test_both_sides_provisioning_at_once_both_succeed(
    nc: Client, nats_server: NatsServer, unique: str
) -> None:
    for round_ in range(5):
        stream = f"race-{unique}-{round_}"
        name_a, name_b = f"a{unique}{round_}", f"b{unique}{round_}"
        a = BridgeConfig(app_name=name_a, destination_app=name_b,
                         stream_name=stream, nats_urls=(nats_server.url,))  # fmt: skip
        b = BridgeConfig(app_name=name_b, destination_app=name_a,
                         stream_name=stream, nats_urls=(nats_server.url,))  # fmt: skip
        api = JetStreamApi(nc)
        await asyncio.gather(
            Provisioner(api).apply(stream_spec(a), [consumer_spec(a)]),
            Provisioner(api).apply(stream_spec(b), [consumer_spec(b)]),
        )
        info = await api.stream_info(stream)
        assert sorted(info["config"]["subjects"]) == sorted(a.subjects.stream_subjects())
        for config in (a, b):
            await api.consumer_info(stream, config.subjects.durable)
        assert (await Provisioner(api).plan(stream_spec(b), [consumer_spec(b)])).changes == ()
