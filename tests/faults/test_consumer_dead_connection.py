"""The consumer on a dead PostgreSQL connection: a batch gives up in bounded time.

Found by the relay partition work: the consumer's inbox transaction runs on the
application's engine, and asyncpg has no timeout of its own, so a batch whose
connection died without a FIN or an RST (:meth:`tcp_proxy.TcpProxy.strand`) waited
for ever — the worker never came back, the durable's deliveries stayed un-acked and the
consumer stopped applying for good.  Now every batch's database work is bounded by
``consumer.batch_timeout`` (:class:`bridge._support.deadline.Deadline`): past it the batch is
rolled back and NAKed, the dead connection is discarded, and the redelivery applies on a
fresh one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import AsyncExitStack

from fault_partition import start_proxy, via_proxy, wait_for
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from bridge import schema
from bridge.config import BridgeConfig, ConsumerOptions
from bridge.envelope import Envelope
from bridge.inbox.processor import InboxProcessor
from bridge.provisioning.provisioner import Provisioner
from bridge.provisioning.specs import consumer_spec, stream_spec
from bridge.routing.router import Router
from bridge.runtime import make_consumer
from bridge.testing import NatsServer
from bridge.transport.connection import Connection
from bridge.transport.delivery import Outcome
from bridge.transport.jsapi import JetStreamApi
from bridge.transport.publisher import Publisher

BATCH_TIMEOUT = 2.0


class Outcomes:
    """A batch observer counting what the consumer did."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def consumer_batch(
        self, deliveries: Sequence[object], outcomes: Sequence[str], seconds: float
    ) -> None:
        self.seen.extend(outcomes)


async def test_a_batch_on_a_dead_connection_gives_up_and_the_redelivery_applies(
    database_url: str, nats_server: NatsServer, unique: str
) -> None:
    config = BridgeConfig(
        app_name=f"a{unique}",
        destination_app=f"b{unique}",
        stream_name=f"s{unique}",
        nats_urls=(nats_server.url,),
        ack_wait=30.0,  # far above the batch timeout: the NAK, not ack_wait, brings it back
        backoff=(0.2, 0.4),
        max_deliver=5,
        consumer=ConsumerOptions(fetch_timeout=0.3, batch_timeout=BATCH_TIMEOUT),
    )
    applied: list[str] = []

    async def handler(session: AsyncSession, envelope: Envelope) -> None:
        await session.execute(text("SELECT 1"))
        applied.append(envelope.resource_id)

    router = Router()
    router.on_resource("organization", handler)
    async with AsyncExitStack() as stack:
        direct = create_async_engine(database_url)
        stack.push_async_callback(direct.dispose)
        await schema.create_all(direct)
        proxy = await start_proxy(database_url)
        engine = create_async_engine(
            via_proxy(database_url, proxy), pool_pre_ping=True, pool_size=1, max_overflow=0
        )
        stack.push_async_callback(engine.dispose)
        connection = Connection(config)
        await connection.start(timeout=10)
        stack.push_async_callback(connection.stop, 2.0)
        await Provisioner(JetStreamApi(connection.nc)).apply(
            stream_spec(config), [consumer_spec(config)]
        )
        processor = InboxProcessor(config, async_sessionmaker(engine), router, None)
        consumer = make_consumer(config, connection, processor)
        outcomes = Outcomes()
        consumer.observer = outcomes
        await consumer.start()
        stack.push_async_callback(consumer.stop, 5.0)
        stack.push_async_callback(proxy.stop)  # first: nothing waits on a stranded socket
        peer = Publisher(connection.js, stream=config.stream_name)

        async def publish(rid: str) -> None:
            await peer.publish(
                config.subjects.consume,
                Envelope(
                    event_type="organization.created",
                    producer=config.destination_app,
                    resource_type="organization",
                    resource_id=rid,
                    payload={"id": rid},
                ),
            )

        await publish("1")
        await wait_for(lambda: applied == ["1"], 10, "the first event applied")

        # The pool's one connection dies without a FIN or an RST; new ones pass.
        proxy.blackhole()
        assert proxy.strand() >= 1
        proxy.pass_through()
        started = time.monotonic()
        await publish("2")
        await wait_for(lambda: Outcome.RETRIED in outcomes.seen, 30, "the stuck batch NAKed")
        gave_up = time.monotonic() - started
        # applied and acked: the handler ran, its transaction committed, the ack went out
        await wait_for(
            lambda: applied[-1:] == ["2"] and outcomes.seen.count(Outcome.ACKED) == 2,
            30,
            "the redelivery applied",
        )
        assert gave_up < BATCH_TIMEOUT + 10, gave_up
