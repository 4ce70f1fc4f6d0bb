"""Helpers for the consumer-side tests: a provisioned stream, a database with the inbox,
an ``effects`` table handlers write to, and helpers to publish as the peer app.

Everything is real (nats-server, PostgreSQL); only ``SpyDelivery`` wraps a real
delivery to observe or drop acknowledgements (fault injection).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from bridge.config import BridgeConfig, ConsumerOptions, Credentials
from bridge.consumer.pull import PullConsumer
from bridge.consumer.push import PushConsumer
from bridge.envelope import Envelope
from bridge.inbox.processor import InboxProcessor
from bridge.provisioning.provisioner import Provisioner
from bridge.provisioning.specs import consumer_spec, stream_spec
from bridge.routing.dlq import DeadLetters
from bridge.routing.router import Router
from bridge.runtime import make_consumer
from bridge.schema import create_all
from bridge.transport.connection import Connection
from bridge.transport.delivery import Delivery
from bridge.transport.jsapi import JetStreamApi
from bridge.transport.publisher import OutgoingMessage, Publisher, PublishResult

EFFECTS_DDL = """
CREATE TABLE effects (
    id bigserial PRIMARY KEY,
    event_id text NOT NULL,
    resource_id text NOT NULL,
    version int NOT NULL DEFAULT 0,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""


def make_config(url: str, unique: str, **overrides: Any) -> BridgeConfig:
    values: dict[str, Any] = {
        "app_name": f"a{unique}",
        "destination_app": f"b{unique}",
        "stream_name": f"s{unique}",
        "nats_urls": (url,),
        "ack_wait": 5.0,
        "max_deliver": 3,
        "backoff": (0.3, 0.6),
        "duplicate_window": 30.0,
        "reconnect_wait": 0.1,
        "consumer": ConsumerOptions(batch_size=64, fetch_timeout=0.5),
    }
    values.update(overrides)
    return BridgeConfig(**values)


def org_event(
    cfg: BridgeConfig,
    resource_id: str = "1",
    *,
    event_type: str = "organization.created",
    **payload: Any,
) -> Envelope:
    """An event as the peer app (destination) would publish it."""
    return Envelope(
        event_type=event_type,
        producer=cfg.destination_app,
        resource_type=event_type.split(".", 1)[0],
        resource_id=resource_id,
        payload=payload,
    )


async def record_effect(session: AsyncSession, env: Envelope) -> None:
    await session.execute(
        text("INSERT INTO effects (event_id, resource_id, version) VALUES (:e, :r, :v)"),
        {"e": env.event_id, "r": env.resource_id, "v": int(env.payload.get("version", 0))},
    )


async def wait_until(
    predicate: Callable[[], Awaitable[bool]], timeout: float = 10.0, interval: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


class SpyDelivery:
    """Wraps a real delivery; records acknowledgements, optionally drops acks."""

    def __init__(self, inner: Delivery, *, drop_ack: bool = False) -> None:
        self.inner = inner
        self.drop_ack = drop_ack
        self.calls: list[tuple[str, float | None]] = []
        self.on_ack: Callable[[], Awaitable[None]] | None = None

    data = property(lambda self: self.inner.data)
    headers = property(lambda self: self.inner.headers)
    subject = property(lambda self: self.inner.subject)
    stream = property(lambda self: self.inner.stream)
    stream_seq = property(lambda self: self.inner.stream_seq)
    num_delivered = property(lambda self: self.inner.num_delivered)

    async def ack(self) -> None:
        self.calls.append(("ack", None))
        if self.on_ack is not None:
            await self.on_ack()
        if not self.drop_ack:
            await self.inner.ack()

    async def nak(self, delay: float | None = None) -> None:
        self.calls.append(("nak", delay))
        await self.inner.nak(delay)

    async def term(self) -> None:
        self.calls.append(("term", None))
        await self.inner.term()

    async def in_progress(self) -> None:
        self.calls.append(("in_progress", None))
        await self.inner.in_progress()

    @property
    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.calls]


@dataclass
class Stack:
    """One consuming app (``cfg.app_name``) plus a peer publisher, over real services."""

    cfg: BridgeConfig
    connection: Connection
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    router: Router
    dead_letters: DeadLetters
    processor: InboxProcessor
    peer: Publisher
    admin: Connection | None = None
    admin_dead_letters: DeadLetters | None = None
    consumers: list[PullConsumer | PushConsumer] = field(default_factory=list)

    async def publish(self, env: Envelope) -> PublishResult:
        return await self.peer.publish(self.cfg.subjects.consume, env)

    async def publish_raw(self, data: bytes, headers: Mapping[str, str] | None = None) -> int:
        message = OutgoingMessage(self.cfg.subjects.consume, data, dict(headers or {}))
        return (await self.peer.publish_raw(message)).seq

    def processor_for(
        self, cfg: BridgeConfig | None = None, router: Router | None = None
    ) -> InboxProcessor:
        return InboxProcessor(
            cfg or self.cfg, self.sessions, router or self.router, self.dead_letters
        )

    async def start_consumer(
        self, cfg: BridgeConfig | None = None, processor: InboxProcessor | None = None, **kw: Any
    ) -> PullConsumer | PushConsumer:
        consumer = make_consumer(
            cfg or self.cfg, self.connection, processor or self.processor, **kw
        )
        await consumer.start()
        self.consumers.append(consumer)
        return consumer

    async def reprovision(self, cfg: BridgeConfig) -> None:
        """Apply ``cfg``'s server-side consumer settings (ack_wait, backoff, max_deliver)."""
        api = JetStreamApi((self.admin or self.connection).nc)
        await Provisioner(api).apply(stream_spec(cfg), [consumer_spec(cfg)])

    async def scalar(self, sql: str, **params: Any) -> Any:
        async with self.engine.connect() as conn:
            return (await conn.execute(text(sql), params)).scalar()

    async def row(self, sql: str, **params: Any) -> tuple[Any, ...]:
        async with self.engine.connect() as conn:
            return tuple((await conn.execute(text(sql), params)).one())

    async def effects(self) -> int:
        return int(await self.scalar("SELECT count(*) FROM effects"))

    async def pull_sub(self) -> Any:
        """A raw pull subscription on the app's durable (for processor-level tests)."""
        return await self.connection.js.pull_subscribe_bind(
            durable=self.cfg.subjects.durable, stream=self.cfg.stream_name
        )


async def build_stack(
    cfg: BridgeConfig,
    database_url: str,
    *,
    admin: Credentials | None = None,
    router: Router | None = None,
) -> Stack:
    """Provision ``cfg``'s stream and consumer, create the tables, connect the app.

    With ``admin`` credentials, provisioning, peer publishing and reading dead
    letters (``Stack.admin_dead_letters``) use an admin connection, while the app
    connection uses ``cfg.credentials`` (restrictive mode).
    """
    engine = create_async_engine(database_url, pool_size=5, max_overflow=5)
    await create_all(engine)
    async with engine.begin() as conn:
        await conn.execute(text(EFFECTS_DDL))
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    connection = Connection(cfg)
    admin_connection: Connection | None = None
    if admin is not None:
        admin_connection = Connection(cfg.with_(credentials=admin), name="admin")
        await admin_connection.start(timeout=10)
    peer_connection = admin_connection or connection
    await connection.start(timeout=10)
    await Provisioner(JetStreamApi(peer_connection.nc)).apply(
        stream_spec(cfg), [consumer_spec(cfg)]
    )
    publisher = Publisher(connection.js, stream=cfg.stream_name)
    peer = Publisher(peer_connection.js, stream=cfg.stream_name)
    dead_letters = DeadLetters(cfg, connection.js, publisher)
    router = router or Router()
    return Stack(
        cfg=cfg,
        connection=connection,
        engine=engine,
        sessions=sessions,
        router=router,
        dead_letters=dead_letters,
        processor=InboxProcessor(cfg, sessions, router, dead_letters),
        peer=peer,
        admin=admin_connection,
        admin_dead_letters=DeadLetters(cfg, peer_connection.js, peer),
    )


async def close_stack(stack: Stack) -> None:
    for consumer in stack.consumers:
        await consumer.stop(timeout=5)
    await stack.connection.stop(timeout=2)
    if stack.admin is not None:
        await stack.admin.stop(timeout=2)
    await stack.engine.dispose()
