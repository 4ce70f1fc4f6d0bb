"""Consumer throughput: inbox + handler vs raw fetch+ack, in the same rounds.

Every run consumes the same N stored messages (the ~300 B workload payload, 500
records) through a durable pull consumer of its own with the same batch size (256):

- raw, two ways, both in every round: nats-py ``fetch(batch)`` + ``ack()`` of every
  message (:func:`_raw`), and pull requests over core NATS — the fetch the bridge's
  pull consumer uses (:class:`~bridge.transport.pull_requests.BatchPuller`), without
  nats-py's task and ``wait_for`` per message — + ``ack()`` of every message
  (:func:`_raw_pull_requests`); nothing else (every message acked after it was seen).
  The faster of the two in a round is that round's baseline;
- bridge: :class:`~bridge.consumer.pull.PullConsumer` +
  :class:`~bridge.inbox.processor.InboxProcessor`
  (inbox claim, handlers in one transaction without savepoints, one commit per
  batch, then acks) with a handler that upserts the event's record.

Headline ``consumer_vs_raw_ratio`` (target >= 0.60): the fastest raw and the services' handler form
(a batch handler, :meth:`bridge.routing.router.Router.on_batch`, one multi-row upsert per run
of the fetched batch, concurrency 1: ``consumer_inbox_batch_handler``) alternate for
``BENCH_RUNS`` (3) rounds; the median round's ratio.  Bound: one Python process at
100 % of a core (decode, inbox rows, SQLAlchemy) while nats-server and PostgreSQL
share the other; raw fetch+ack is bound by the client's per-message ack
(``consumer_raw_cpu_percent`` / ``consumer_inbox_batch_handler_cpu_percent``: this
process's CPU time over wall time in those runs, median; ~100 % is CPU-bound).

Variants, once each after the rounds, against the mean of the fastest raw runs around
them (``consumer_variants_raw_fetch_ack``; ``events/s`` and ``_vs_raw`` each):

- ``consumer_inbox_c1_default_engine``: per-event handler, SQLAlchemy's default engine;
- ``consumer_inbox_c1`` / ``_c4``: concurrency 1 / 4 with the engine the inbox doc
  recommends: ``prepared_statement_cache_size=1000`` (holds the fallback path's
  per-savepoint statements; see :mod:`bridge.inbox.processor`, "Throughput") and
  ``pool_size = concurrency + 2``;
- ``consumer_inbox_c1_savepoints``: ``optimistic=False``, every batch on the
  savepoint path (what the inbox did before): the optimistic path's gain;
- ``consumer_inbox_c1_noop_handler``: a handler that writes nothing, so what is
  left is the inbox's own cost (decode, claim, commit, acks);
- ``consumer_inbox_c1_batch_handler`` / ``_c4``: the batch handler at concurrency 1 / 4;
- ``consumer_per_event_vs_raw_ratio``: the best per-event-handler run, comparable
  with earlier reports;
- ``consumer_inbox_one_tx_per_event``: batch size 1, for comparison.

Run alone with ``python -m benchmarks consumer``.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import cast

from nats.aio.msg import Msg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from benchmarks.stats import CpuMeter, Line, interleaved, median_ratio, ratio_lines
from benchmarks.workload import payload, runs
from bridge.config import BridgeConfig, ConsumerOptions
from bridge.consumer.pull import PullConsumer
from bridge.envelope import Envelope
from bridge.inbox.processor import InboxProcessor
from bridge.provisioning.provisioner import Provisioner
from bridge.provisioning.specs import consumer_spec, stream_spec
from bridge.routing.dlq import DeadLetters
from bridge.routing.router import BatchHandler, Handler, Router
from bridge.schema import create_all
from bridge.transport.connection import Connection
from bridge.transport.jsapi import JetStreamApi
from bridge.transport.publisher import Publisher
from bridge.transport.pull_requests import BatchPuller

N = 5000
BATCH = 256
DEADLINE = 120.0
STATEMENT_CACHE = 1000

TABLE_DDL = """
CREATE TABLE IF NOT EXISTS bench_orgs (
    id text PRIMARY KEY, name text NOT NULL, version int NOT NULL
)
"""
UPSERT = text(
    "INSERT INTO bench_orgs (id, name, version) VALUES (:id, :name, :v) "
    "ON CONFLICT (id) DO UPDATE SET name = excluded.name, version = excluded.version"
)


async def upsert_org(session: AsyncSession, env: Envelope) -> None:
    payload = env.payload
    await session.execute(
        UPSERT, {"id": env.resource_id, "name": payload["name"], "v": payload["version"]}
    )


UPSERT_MANY = text(
    "INSERT INTO bench_orgs (id, name, version) "
    "SELECT * FROM unnest(CAST(:ids AS text[]), CAST(:names AS text[]), CAST(:vs AS int[])) "
    "ON CONFLICT (id) DO UPDATE SET name = excluded.name, version = excluded.version"
)


async def upsert_orgs(session: AsyncSession, envs: Sequence[Envelope]) -> None:
    """The batch handler: one multi-row upsert per call (the last event of a record wins)."""
    rows = {env.resource_id: env.payload for env in envs}
    await session.execute(
        UPSERT_MANY,
        {
            "ids": list(rows),
            "names": [payload["name"] for payload in rows.values()],
            "vs": [payload["version"] for payload in rows.values()],
        },
    )


async def noop(session: AsyncSession, env: Envelope) -> None:
    """A handler that writes nothing: what is left is the inbox's own cost."""


#: name, concurrency, prepared_statement_cache_size (None: default 100), handler, optimistic
RUNS: tuple[tuple[str, int, int | None, Handler | BatchHandler, bool], ...] = (
    ("consumer_inbox_c1_default_engine", 1, None, upsert_org, True),
    ("consumer_inbox_c1", 1, STATEMENT_CACHE, upsert_org, True),
    ("consumer_inbox_c4", 4, STATEMENT_CACHE, upsert_org, True),
    ("consumer_inbox_c1_savepoints", 1, STATEMENT_CACHE, upsert_org, False),
    ("consumer_inbox_c1_noop_handler", 1, STATEMENT_CACHE, noop, True),
    ("consumer_inbox_c1_batch_handler", 1, STATEMENT_CACHE, upsert_orgs, True),
    ("consumer_inbox_c4_batch_handler", 4, STATEMENT_CACHE, upsert_orgs, True),
)
#: the real workload with per-event handlers (one upsert per event)
PER_EVENT = ("consumer_inbox_c1_default_engine", "consumer_inbox_c1", "consumer_inbox_c4")
#: the headline run, alternated with raw: the services' handler form (batch, concurrency 1)
HEADLINE_RUN = (
    "consumer_inbox_batch_handler",
    1,
    STATEMENT_CACHE,
    cast("Handler | BatchHandler", upsert_orgs),
    True,
)


async def _publish(cfg: BridgeConfig, conn: Connection, n: int) -> None:
    publisher = Publisher(conn.js, stream=cfg.stream_name)
    envelopes = [
        Envelope(
            event_type="organization.updated",
            producer=cfg.destination_app,
            resource_type="organization",
            resource_id=str(i % 500),
            payload={**payload(i, str(i % 500)), "version": i},
        )
        for i in range(n)
    ]
    for start in range(0, n, 1000):
        chunk = envelopes[start : start + 1000]
        await asyncio.gather(*(publisher.publish(cfg.subjects.consume, e) for e in chunk))


async def _raw_durable(cfg: BridgeConfig, conn: Connection, label: str) -> str:
    """A fresh durable with the app's consumer settings, for one raw run."""
    durable = f"{cfg.subjects.durable}-raw-{label}"
    config = consumer_spec(cfg).to_api()
    config["durable_name"] = durable
    await JetStreamApi(conn.nc).save_consumer(cfg.stream_name, config, action="create")
    return durable


async def _fetch_and_ack(
    conn: Connection,
    n: int,
    fetch: Callable[[], Awaitable[list[Msg]]],
    cpu: CpuMeter | None,
) -> float:
    """Events/s of ``fetch()`` + ``ack()`` of every message until ``n`` are acked."""
    done = 0
    with cpu.span() if cpu else contextlib.nullcontext():
        start = time.perf_counter()
        while done < n and time.perf_counter() - start < DEADLINE:
            msgs = await fetch()
            for msg in msgs:
                await msg.ack()
            done += len(msgs)
        await conn.nc.flush()
        elapsed = time.perf_counter() - start
    return done / elapsed


async def _raw(
    cfg: BridgeConfig, conn: Connection, n: int, label: str, cpu: CpuMeter | None = None
) -> float:
    """nats-py ``fetch(BATCH)`` + ``ack()`` of every message."""
    durable = await _raw_durable(cfg, conn, label)
    sub = await conn.js.pull_subscribe_bind(durable=durable, stream=cfg.stream_name)
    try:
        return await _fetch_and_ack(conn, n, lambda: sub.fetch(BATCH, timeout=1.0), cpu)
    finally:
        await sub.unsubscribe()


async def _raw_pull_requests(
    cfg: BridgeConfig, conn: Connection, n: int, label: str, cpu: CpuMeter | None = None
) -> float:
    """Pull requests of BATCH over core NATS (what the bridge's pull consumer sends,
    :class:`~bridge.transport.pull_requests.BatchPuller`) + ``ack()`` of every message:
    the same fetch as the bridge without the bridge."""
    durable = await _raw_durable(cfg, conn, label)
    puller = BatchPuller(conn.nc, f"$JS.API.CONSUMER.MSG.NEXT.{cfg.stream_name}.{durable}")
    await puller.start()
    try:
        return await _fetch_and_ack(conn, n, lambda: puller.fetch(BATCH, timeout=1.0), cpu)
    finally:
        await puller.stop()


async def _bridge(
    cfg: BridgeConfig,
    conn: Connection,
    database_url: str,
    n: int,
    concurrency: int,
    *,
    statement_cache: int | None = None,
    batch: int = BATCH,
    handler: Handler | BatchHandler = upsert_org,
    optimistic: bool = True,
    label: str = "",
    cpu: CpuMeter | None = None,
) -> float:
    connect_args = (
        {} if statement_cache is None else {"prepared_statement_cache_size": statement_cache}
    )
    engine = create_async_engine(database_url, pool_size=concurrency + 2, connect_args=connect_args)
    try:
        async with engine.begin() as db:
            await db.execute(text("DROP TABLE IF EXISTS bench_orgs, bridge_inbox"))
            await db.execute(text(TABLE_DDL))
        await create_all(engine)
        router = Router()
        if handler is upsert_orgs:
            router.on_batch("organization", upsert_orgs)
        else:
            router.on_resource("organization", handler)  # type: ignore[arg-type]
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        run_cfg = cfg.with_(
            consumer=ConsumerOptions(batch_size=batch, fetch_timeout=1.0, concurrency=concurrency)
        )
        publisher = Publisher(conn.js, stream=cfg.stream_name)
        processor = InboxProcessor(
            run_cfg,
            sessions,
            router,
            DeadLetters(run_cfg, conn.js, publisher),
            optimistic=optimistic,
        )
        # a durable of its own per run, so every run consumes all N messages
        run_name = (
            f"{cfg.app_name}c{concurrency}s{statement_cache or 0}b{batch}"
            f"{handler.__name__.replace('_', '')}{'o' if optimistic else 'p'}{label}"
        )
        durable_cfg = run_cfg.with_(app_name=run_name)
        spec = consumer_spec(run_cfg)
        config = spec.to_api()
        config["durable_name"] = durable_cfg.subjects.durable
        await JetStreamApi(conn.nc).save_consumer(cfg.stream_name, config, action="create")
        # The consumer binds to the durable named after app_name; filter is cfg's.
        consumer = PullConsumer(durable_cfg, conn, processor, watch_max_deliveries=False)
        with cpu.span() if cpu else contextlib.nullcontext():
            start = time.perf_counter()
            await consumer.start()
            while time.perf_counter() - start < DEADLINE:
                if consumer.stats().outcomes.get("acked", 0) >= n:
                    break
                await asyncio.sleep(0.005)
            elapsed = time.perf_counter() - start
        await consumer.stop(timeout=10)
        return consumer.stats().outcomes.get("acked", 0) / elapsed
    finally:
        await engine.dispose()


async def bench_consumer(nats_url: str, database_url: str) -> list[Line]:
    """Return ``(name, value, unit)`` lines: raw, bridge and ratio per run kind."""
    token = uuid.uuid4().hex[:6]
    cfg = BridgeConfig(
        app_name=f"benchc{token}",
        destination_app=f"benchp{token}",
        stream_name=f"bench-consumer-{token}",
        nats_urls=(nats_url,),
        ack_wait=60.0,
    )
    conn = Connection(cfg)
    await conn.start(timeout=10)
    labels = iter(range(10**6))

    raw_cpu, pull_cpu, ours_cpu = CpuMeter(), CpuMeter(), CpuMeter()

    async def raw_run() -> float:
        return await _raw(cfg, conn, N, str(next(labels)), raw_cpu)

    async def raw_pull_run() -> float:
        return await _raw_pull_requests(cfg, conn, N, str(next(labels)), pull_cpu)

    async def headline_run() -> float:
        _name, concurrency, cache, handler, optimistic = HEADLINE_RUN
        return await _bridge(
            cfg,
            conn,
            database_url,
            N,
            concurrency,
            statement_cache=cache,
            handler=handler,
            optimistic=optimistic,
            label=f"h{next(labels)}",
            cpu=ours_cpu,
        )

    try:
        await Provisioner(JetStreamApi(conn.nc)).apply(stream_spec(cfg), [])
        await _publish(cfg, conn, N)
        # The headline: raw and the services' handler form alternate, median of the rounds.
        # The baseline of a round is the faster of the two raw ways in it.
        three = await interleaved(runs(), raw_run, raw_pull_run, headline_run)
        rounds = [(max(fetch, pull), ours) for fetch, pull, ours in three]
        headline = median_ratio(rounds)
        lines = ratio_lines(
            "consumer_vs_raw_ratio",
            headline,
            base="consumer_raw_fastest",
            ours=HEADLINE_RUN[0],
            unit="events/s",
        )
        lines += ratio_lines(
            "consumer_vs_nats_py_fetch_ratio",
            median_ratio((fetch, ours) for fetch, _, ours in three),
            base="consumer_raw_fetch_ack",
            ours=None,
            unit="events/s",
        )
        lines += ratio_lines(
            "consumer_vs_raw_pull_requests_ratio",
            median_ratio((pull, ours) for _, pull, ours in three),
            base="consumer_raw_pull_requests_ack",
            ours=None,
            unit="events/s",
        )
        lines += [
            raw_cpu.line("consumer_raw_cpu_percent"),
            pull_cpu.line("consumer_raw_pull_requests_cpu_percent"),
            ours_cpu.line("consumer_inbox_batch_handler_cpu_percent"),
        ]
        # Every other variant once, against the mean of the raw runs around them.
        raw_before = statistics.mean(base for base, _ in rounds)
        rates: dict[str, float] = {}
        for name, concurrency, cache, handler, optimistic in RUNS:
            rates[name] = await _bridge(
                cfg,
                conn,
                database_url,
                N,
                concurrency,
                statement_cache=cache,
                handler=handler,
                optimistic=optimistic,
            )
        # for comparison: one transaction per event (batch of 1), fewer events
        one_tx = await _bridge(
            cfg, conn, database_url, N // 5, 1, statement_cache=STATEMENT_CACHE, batch=1
        )
        raw = (raw_before + max(await raw_run(), await raw_pull_run())) / 2
        lines.append(("consumer_variants_raw_fetch_ack", round(raw), "events/s"))
        for name, rate in rates.items():
            lines.append((name, round(rate), "events/s"))
            lines.append((f"{name}_vs_raw", round(rate / raw, 3), "ratio"))
        per_event = max(rates[name] for name in PER_EVENT) / raw
        lines.append(("consumer_per_event_vs_raw_ratio", round(per_event, 3), "ratio"))
        lines.append(("consumer_inbox_one_tx_per_event", round(one_tx), "events/s"))
        await JetStreamApi(conn.nc).delete_stream(cfg.stream_name)
        return lines
    finally:
        await conn.stop(timeout=5)
