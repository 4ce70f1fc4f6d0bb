"""Web and worker processes scale separately: B's API runs with its consumer off and
B's worker (services.shared.worker, what ``python -m services.system_b.worker`` runs)
applies A's changes."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import httpx
from e2e_support import eventually, start_side

from bridge.testing import NatsServer, PostgresServer
from services.shared.settings import ServiceSettings
from services.shared.worker import run_worker


async def test_worker_applies_changes_for_a_web_process_without_consumer(
    nats_server: NatsServer, postgres: PostgresServer, unique: str
) -> None:
    stream = f"worker-{unique}"
    async with AsyncExitStack() as stack:
        a = await start_side(
            stack, postgres, name=f"a{unique}", peer=f"b{unique}", stream=stream,
            nats_url=nats_server.url,
        )  # fmt: skip
        b = await start_side(
            stack, postgres, name=f"b{unique}", peer=f"a{unique}", stream=stream,
            nats_url=nats_server.url, enable_consumer=False,
        )  # fmt: skip
        assert b.state.bridge is not None and b.state.bridge.consumer is None
        created = await a.client.post(
            "/organizations", json={"name": "Via worker", "domain": f"w{unique}.test"}
        )
        assert created.status_code == 201
        org_id = created.json()["id"]
        await asyncio.sleep(0.5)
        assert (await b.get(f"/organizations/{org_id}")).status_code == 404  # nobody consumes

        stop = asyncio.Event()
        settings = ServiceSettings(
            app_name=b.name, destination_app=a.name, database_url=b.database_url,
            db_pool_size=3, metrics_port=0,
        )  # fmt: skip
        env = {"NATS_URL": nats_server.url, "STREAM_NAME": stream}
        ports: list[int] = []
        worker = asyncio.create_task(run_worker(settings, stop, env=env, listening=ports.append))
        try:

            async def arrived() -> bool:
                return (await b.get(f"/organizations/{org_id}")).status_code == 200

            await eventually(arrived, timeout=20.0, what="organization applied by B's worker")

            # The worker's own operations endpoint (METRICS_PORT) reports what it did.
            assert len(ports) == 1
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports[0]}") as ops:
                metrics = (await ops.get("/metrics")).text
                processed = [
                    line
                    for line in metrics.splitlines()
                    if line.startswith("bridge_deliveries_total{") and 'outcome="acked"' in line
                ]
                assert processed and float(processed[0].rsplit(" ", 1)[1]) >= 1.0, metrics
                health = await ops.get("/health")
                assert health.status_code == 200 and health.json()["status"] == "ok"
                status = (await ops.get("/sync_status")).json()
                assert status["organizations_count"] == 1 and status["processed_events_count"] >= 1
                assert (await ops.get("/organizations")).status_code == 404  # no domain API
        finally:
            stop.set()
            await asyncio.wait_for(worker, 15.0)
