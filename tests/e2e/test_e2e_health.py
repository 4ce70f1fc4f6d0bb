"""``/health`` reflects reality: 503 while NATS or the database is down, 200 again after."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

from e2e_support import eventually, start_side

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
