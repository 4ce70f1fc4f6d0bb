"""``/health`` reflects reality: 503 while NATS or the database is down, 200 again after."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

import nats
from e2e_support import eventually, start_side
from sqlalchemy.ext.asyncio import AsyncSession

from bridge.envelope import Envelope
from bridge.subjects import Subjects
from bridge.testing import NatsServer, PostgresServer


async def test_health_is_503_while_nats_is_down(postgres: PostgresServer, unique: str) -> None:
    server = NatsServer().start()
    try:
        async with AsyncExitStack() as stack:
            side = await start_side(
                stack, postgres, name=f"a{unique}", peer=f"b{unique}", stream=f"h-{unique}",
                nats_url=server.url,
            )  # fmt: skip
            first = await side.get("/health")
            assert first.status_code == 200, first.text
            assert first.json()["nats"]["connected"] is True
            assert first.json()["database"]["connected"] is True
            server.stop()

            async def down() -> dict[str, Any] | None:
                response = await side.get("/health")
                return response.json() if response.status_code == 503 else None

            body = await eventually(down, what="503 while NATS is down")
            assert body["status"] == "degraded"
            assert body["nats"]["connected"] is False
            # The API keeps working on its own database while NATS is away...
            created = await side.client.post(
                "/organizations", json={"name": "Offline", "domain": "offline.test"}
            )
            assert created.status_code == 201
            server.start()

            async def up() -> bool:
                return (await side.get("/health")).status_code == 200

            await eventually(up, what="200 after NATS is back")

            # ...and what was written meanwhile is published once NATS is back.
            async def published() -> bool:
                pending: int = (await side.get("/sync_status")).json()["outbox"]["pending"]
                return pending == 0

            await eventually(published, what="outbox drained after the outage")
    finally:
        server.cleanup()


async def test_health_is_503_when_the_database_is_gone(
    nats_server: NatsServer, postgres: PostgresServer, unique: str
) -> None:
    async with AsyncExitStack() as stack:
        side = await start_side(
            stack, postgres, name=f"a{unique}", peer=f"b{unique}", stream=f"h-{unique}",
            nats_url=nats_server.url,
        )  # fmt: skip
        assert (await side.get("/health")).status_code == 200
        await postgres.drop_database(side.database_url)  # WITH (FORCE): connections are cut
        response = await side.get("/health")
        assert response.status_code == 503, response.text
        assert response.json()["database"]["connected"] is False
        assert response.json()["nats"]["connected"] is True


class _Killer(BaseException):
    """Ends the consumer task that runs into it (fault injection: no ``except Exception``
    stops it, like a library bug or a stray cancellation)."""


async def test_health_is_503_while_a_consumer_task_keeps_dying(
    nats_server: NatsServer, postgres: PostgresServer, unique: str
) -> None:
    async with AsyncExitStack() as stack:
        name, peer = f"a{unique}", f"b{unique}"
        side = await start_side(
            stack, postgres, name=name, peer=peer, stream=f"h-{unique}",
            nats_url=nats_server.url,
        )  # fmt: skip
        assert (await side.get("/health")).status_code == 200
        bridge = side.state.bridge
        assert bridge is not None

        async def kill(session: AsyncSession, envelope: Envelope) -> None:
            raise _Killer("gadget handler kills its worker")

        bridge.router.on_resource("gadget", kill)
        nc = await nats.connect(nats_server.url)
        stack.push_async_callback(nc.close)
        js = nc.jetstream()
        for i in range(2):  # as the peer would publish them
            env = Envelope(
                event_type="gadget.created", producer=peer, resource_type="gadget",
                resource_id=f"g{i}", payload={},
            )  # fmt: skip
            await js.publish(Subjects(peer, name).publish, env.to_bytes(), headers=env.headers())

        async def unhealthy() -> dict[str, Any] | None:
            response = await side.get("/health")
            return response.json() if response.status_code == 503 else None

        body = await eventually(unhealthy, timeout=20, what="503 while the worker keeps dying")
        assert body["status"] == "degraded"
        assert body["nats"]["connected"] is True and body["database"]["connected"] is True
        consumer = body["consumer"]
        assert consumer["healthy"] is False and consumer["task_restarts"] >= 2
        assert any("worker" in p and "_Killer" in p for p in consumer["problems"]), consumer
