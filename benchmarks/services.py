"""Service-level figures: sync latency A→B and API write throughput with/without the outbox.

``bench_services(nats_url, database_url_factory)`` returns ``(name, value, unit)`` lines:

- ``services_sync_latency_p50`` / ``_p99`` (ms): from the moment ``POST /organizations``
  on System A returns (the row and its outbox row are committed) until the record is
  readable in System B's database, under light load (one change at a time, ~20/s).
  Visibility is polled every millisecond, so figures include up to ~1 ms of polling.
  Target: p99 < 100 ms.
- ``services_api_writes_capture_only`` (req/s) and ``services_outbox_capture_cost`` (%):
  the same with the outbox row written in the request's transaction but the relay
  running elsewhere (``ENABLE_RELAY=false`` — a web process whose relay runs in a worker),
  i.e. the price of the transactional outbox itself on the request path.
- ``services_api_writes_outbox_on`` / ``_off`` (req/s): ``POST /organizations`` from
  concurrent clients against System A in-process (ASGI, no HTTP server), with the
  bridge running (the tables' capture triggers write the outbox row in the request's
  transaction + the relay publishing) and with sync off (plain sessions on connections
  with ``bridge.capture = off``: the trigger fires and returns at once).
  ``services_outbox_cost`` (%) is the throughput lost.  Target: ≤ 20 %.  Off, on and
  capture-only alternate for ``BENCH_RUNS`` (3)
  rounds; each cost is 1 - the median round's ratio (``_spread``: how far the rounds'
  costs disagreed).  Bound: one Python process serving the API (FastAPI + SQLAlchemy,
  about one core) with the relay in the same process for ``on``; PostgreSQL's commits
  share the other core.

Both apps run in this process with their real lifespans; ``database_url_factory``
returns a fresh, empty database URL per call (sync or async callable).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import asyncpg
import httpx
from fastapi import FastAPI
from sqlalchemy import text

from benchmarks.stats import Line, interleaved, median_ratio, percentile
from benchmarks.workload import runs
from bridge.config import ConsumerOptions, RelayOptions
from bridge.testing import database_name, replace_database, to_plain_url
from services.shared.app import create_app
from services.shared.db import migrate
from services.shared.settings import ServiceSettings
from services.shared.state import ServiceState

UrlFactory = Callable[[], str | Awaitable[str]]

LATENCY_SAMPLES = 200
LATENCY_SPACING = 0.05
WRITE_REQUESTS = 1200
WRITE_CLIENTS = 16
WARMUP = 50


async def _fresh(factory: UrlFactory, created: list[str]) -> str:
    url = factory()
    if inspect.isawaitable(url):
        url = await url
    assert isinstance(url, str)
    created.append(url)
    await migrate(url)
    return url


async def _drop(urls: list[str]) -> None:
    """Drop the databases this run created (best effort, via the server's ``postgres`` db)."""
    for url in urls:
        plain = to_plain_url(url)
        with contextlib.suppress(Exception):
            conn = await asyncpg.connect(replace_database(plain, "postgres"))
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{database_name(plain)}" WITH (FORCE)')
            finally:
                await conn.close()


@asynccontextmanager
async def _app(
    name: str,
    peer: str,
    url: str,
    nats_url: str,
    stream: str,
    *,
    sync: bool = True,
    relay: bool = True,
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    settings = ServiceSettings(
        app_name=name,
        destination_app=peer,
        database_url=url,
        sync_enabled=sync,
        db_pool_size=20,
        id_system_number=1 if name < peer else 2,  # each side its own
    )
    config = settings.to_bridge_config(
        env={"NATS_URL": nats_url, "STREAM_NAME": stream},
        enable_relay=relay,
        relay=RelayOptions(poll_interval=0.5),
        consumer=ConsumerOptions(fetch_timeout=1.0),
    )
    app = create_app(settings, bridge_config=config)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(app.router.lifespan_context(app))
        client = await stack.enter_async_context(
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{name}")
        )
        yield app, client


async def bench_latency(
    nats_url: str, factory: UrlFactory, created: list[str]
) -> list[tuple[str, float, str]]:
    token = uuid.uuid4().hex[:6]
    a_name, b_name, stream = f"bench_a{token}", f"bench_b{token}", f"bench-{token}"
    url_a, url_b = await _fresh(factory, created), await _fresh(factory, created)
    latencies: list[float] = []
    async with (
        _app(a_name, b_name, url_a, nats_url, stream) as (_app_a, client_a),
        _app(b_name, a_name, url_b, nats_url, stream) as (app_b, _client_b),
    ):
        state_b: ServiceState = app_b.state.service
        async with state_b.engine.connect() as conn:
            for i in range(LATENCY_SAMPLES):
                response = await client_a.post(
                    "/organizations", json={"name": f"L{i}", "domain": f"l{i}-{token}.test"}
                )
                committed = time.perf_counter()
                org_id = response.json()["id"]
                query = text("SELECT 1 FROM organizations WHERE id = :id")
                deadline = committed + 5.0
                while (await conn.execute(query, {"id": org_id})).first() is None:
                    await conn.rollback()  # a fresh snapshot for the next poll
                    if time.perf_counter() > deadline:
                        raise RuntimeError(f"organization {org_id} did not reach B within 5 s")
                    await asyncio.sleep(0.001)
                latencies.append((time.perf_counter() - committed) * 1000)
                await conn.rollback()
                await asyncio.sleep(LATENCY_SPACING)
    return [
        ("services_sync_latency_p50", round(statistics.median(latencies), 2), "ms"),
        ("services_sync_latency_p99", round(percentile(latencies, 99), 2), "ms"),
    ]


async def _write_throughput(
    nats_url: str, factory: UrlFactory, created: list[str], *, sync: bool, relay: bool = True
) -> float:
    token = uuid.uuid4().hex[:6]
    url = await _fresh(factory, created)
    stream = f"bench-w{token}"
    async with _app(
        f"bench_w{token}", f"bench_p{token}", url, nats_url, stream, sync=sync, relay=relay
    ) as (
        _app_w,
        client,
    ):
        counter = iter(range(10**9))

        async def client_loop(requests: int) -> None:
            for _ in range(requests):
                n = next(counter)
                response = await client.post(
                    "/organizations", json={"name": f"W{n}", "domain": f"w{n}-{token}.test"}
                )
                if response.status_code != 201:
                    raise RuntimeError(
                        f"POST /organizations: {response.status_code} {response.text}"
                    )

        await asyncio.gather(
            *(client_loop(WARMUP // WRITE_CLIENTS + 1) for _ in range(WRITE_CLIENTS))
        )
        started = time.perf_counter()
        await asyncio.gather(
            *(client_loop(WRITE_REQUESTS // WRITE_CLIENTS) for _ in range(WRITE_CLIENTS))
        )
        elapsed = time.perf_counter() - started
    return (WRITE_REQUESTS // WRITE_CLIENTS) * WRITE_CLIENTS / elapsed


async def bench_services(nats_url: str, database_url_factory: UrlFactory) -> list[Line]:
    created: list[str] = []
    try:
        results = await bench_latency(nats_url, database_url_factory, created)

        async def off() -> float:
            return await _write_throughput(nats_url, database_url_factory, created, sync=False)

        async def on() -> float:
            return await _write_throughput(nats_url, database_url_factory, created, sync=True)

        async def capture() -> float:
            return await _write_throughput(
                nats_url, database_url_factory, created, sync=True, relay=False
            )

        # off / on / capture-only alternate; each cost is the median round's.
        rounds = await interleaved(runs(), off, on, capture)
    finally:
        await _drop(created)
    with_relay = median_ratio((o, n) for o, n, _ in rounds)
    capture_only = median_ratio((o, c) for o, _, c in rounds)
    best_off, best_on = with_relay.median_pair
    capture_off, best_capture = capture_only.median_pair
    results += [
        ("services_api_writes_capture_only", round(best_capture, 1), "req/s"),
        ("services_api_writes_capture_base_off", round(capture_off, 1), "req/s"),
        (
            "services_outbox_capture_cost",
            round(max(0.0, 1 - capture_only.median) * 100, 1),
            "%",
        ),
        ("services_api_writes_outbox_on", round(best_on, 1), "req/s"),
        ("services_api_writes_outbox_off", round(best_off, 1), "req/s"),
        ("services_outbox_cost", round(max(0.0, 1 - with_relay.median) * 100, 1), "%"),
        (
            "services_outbox_cost_spread",
            round(with_relay.spread * 100, 1),
            f"% over {len(rounds)} runs",
        ),
    ]
    return results
