"""Outbox relay figures, each against a raw baseline measured in the same rounds.

Workload (:mod:`benchmarks.workload`): ``N`` envelopes with a ~300 B payload.  Each of
``BENCH_RUNS`` (3) rounds runs, one after the other, on the same stream:

1. ``publish_async`` raw (:func:`benchmarks.raw.publish_async`): the fastest correct
   way nats-py publishes ``N`` messages with ``Nats-Msg-Id``, every PubAck checked;
2. the semaphore raw (:func:`benchmarks.raw.publish_semaphore`): ``js.publish`` per
   message behind a semaphore of ``max_in_flight``, the baseline of earlier reports;
3. :class:`~bridge.outbox.relay.OutboxRelay`'s own loop draining ``N`` pre-committed outbox
   rows (claim + publish + mark sent), ``high_throughput`` relay options (batch 1000,
   1024 PubAcks in flight).

Lines:

- ``relay_vs_publish_async_ratio``: relay / ``publish_async``, median of the rounds
  (``relay_publish_async_events_per_s`` and ``relay_events_per_s`` are that round's);
- ``relay_vs_raw_ratio``: relay / semaphore raw, median of the rounds (secondary,
  comparable with earlier reports; ``relay_raw_events_per_s``);
- ``relay_publish_async_cpu_percent`` / ``relay_drain_cpu_percent``: this process's
  CPU time over wall time during the raw and the relay runs (median): about 100 % is
  bound by the client's one core, lower is waiting on the servers;
- ``relay_drain_lost`` / ``_duplicated``: relay events missing from / stored twice
  on the stream after all rounds — asserted 0 (a run that loses or duplicates fails);
- ``relay_commit_to_puback_p50_ms`` / ``_p99_ms``: at a steady ``LATENCY_RATE`` events/s
  for ``LATENCY_SECONDS`` s, one row per transaction committed through an outbox
  session with the relay running with default options (woken by the commit
  listener), from the moment ``commit()`` returned to the moment a core NATS
  subscriber on the subject receives the message — which the server routes when it
  stores it, i.e. when it sends the PubAck; ``relay_latency_rate`` is the commit rate
  achieved, ``relay_latency_lost`` / ``_duplicated`` are checked as above.

What bounds them on this 2-core machine: ``publish_async`` is bound by one Python
process (the client's encode + the reply callback per message) with nats-server on
the other core; the relay additionally pays PostgreSQL (claim, mark sent) on the same
two cores, so the ratio says how much of the client's CPU budget the outbox costs.
Run alone with ``python -m benchmarks relay``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from sqlalchemy import MetaData, String, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from benchmarks import raw
from benchmarks.stats import (
    CpuMeter,
    Line,
    check_delivery,
    interleaved,
    latency_lines,
    median_ratio,
    ratio_lines,
)
from benchmarks.workload import (
    DeliveryError,
    bench_config,
    create_stream,
    delete_stream,
    envelope,
    messages,
    payload,
    runs,
    stored_ids,
)
from bridge.config import BridgeConfig
from bridge.outbox.capture import Outbox, Synced
from bridge.outbox.relay import OutboxRelay
from bridge.presets import PRESETS
from bridge.schema import create_all
from bridge.schema import outbox as outbox_table
from bridge.transport.publisher import Publisher

N = 10_000
LATENCY_RATE = 500.0
LATENCY_SECONDS = 5.0
PRODUCERS = 4
DEADLINE = 120.0


class _Base(DeclarativeBase):
    metadata = MetaData()


class BenchOrg(Synced, _Base):
    """A synced model whose snapshot is the workload's ~300 B payload."""

    __tablename__ = "bench_relay_orgs"
    __bridge_resource__ = "organization"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    domain: Mapped[str] = mapped_column(String(100))
    notes: Mapped[str] = mapped_column(String(300))


async def _relay_drain(
    cfg: BridgeConfig,
    nc: Client,
    engine: AsyncEngine,
    n: int,
    ids: list[str],
    cpu: CpuMeter | None = None,
) -> float:
    box = Outbox(cfg)
    envelopes = [envelope(cfg, i) for i in range(n)]
    ids.extend(e.event_id for e in envelopes)
    rows = [box.row_for(e) for e in envelopes]
    async with engine.begin() as conn:
        for start in range(0, n, 1000):
            await conn.execute(insert(outbox_table), rows[start : start + 1000])
    publisher = Publisher(nc.jetstream(), stream=cfg.stream_name, timeout=5.0)
    relay = OutboxRelay(cfg, engine, publisher)
    # The relay's own loop drains (overlapping batches); the 2 ms check of its
    # in-memory counter is the measurement's resolution.
    with cpu.span() if cpu else contextlib.nullcontext():
        started = time.perf_counter()
        await relay.start()
        try:
            while time.perf_counter() - started < DEADLINE:
                if relay.published_total >= n:
                    break
                await asyncio.sleep(0.002)
            elapsed = time.perf_counter() - started
        finally:
            await relay.stop(10.0)
    return relay.published_total / elapsed


async def _latency(
    cfg: BridgeConfig, nc: Client, engine: AsyncEngine, ids: list[str]
) -> list[Line]:
    box = Outbox(cfg)
    sessions = async_sessionmaker(engine, sync_session_class=box.session_class)
    committed: dict[str, float] = {}
    arrived: dict[str, float] = {}
    total = int(LATENCY_RATE * LATENCY_SECONDS)
    all_received = asyncio.Event()

    async def received(msg: Msg) -> None:
        # Matched with the commit time afterwards: a message may arrive before its
        # producer coroutine got back from commit() to record the time.
        arrived[json.loads(msg.data)["resource_id"]] = time.perf_counter()
        if len(arrived) >= total:
            all_received.set()

    sub = await nc.subscribe(cfg.subjects.publish, cb=received)
    relay = OutboxRelay(
        cfg,
        engine,
        Publisher(nc.jetstream(), stream=cfg.stream_name, timeout=5.0),
        outbox=box,
        connected=lambda: nc.is_connected,
    )
    await relay.start()
    interval = 1.0 / LATENCY_RATE
    started = time.perf_counter()

    async def producer(offset: int) -> None:
        for k in range(offset, total, PRODUCERS):
            delay = started + k * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            org_id = str(uuid.uuid4())
            snapshot = payload(k, org_id)
            async with sessions() as session:
                session.add(
                    BenchOrg(
                        id=org_id,
                        name=snapshot["name"],
                        domain=snapshot["domain"],
                        notes=snapshot["notes"],
                    )
                )
                await session.commit()
                committed[org_id] = time.perf_counter()

    try:
        await asyncio.gather(*(producer(p) for p in range(PRODUCERS)))
        rate = total / (time.perf_counter() - started)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_received.wait(), 30.0)
    finally:
        await relay.stop(10.0)
        await sub.unsubscribe()
    # The event ids of the committed rows, for the lost/duplicated check on the stream.
    async with engine.connect() as conn:
        result = await conn.execute(
            select(outbox_table.c.event_id).where(outbox_table.c.resource_id.in_(list(committed)))
        )
        ids.extend(str(event_id) for event_id in result.scalars())
    lines = latency_lines("relay_commit_to_puback", committed, arrived)
    lines.append(("relay_latency_rate", round(rate, 1), "events/s"))
    return lines


async def bench_relay(nats_url: str, database_url: str) -> list[Line]:
    # Latency: the default relay options (what an application runs with).
    cfg = bench_config(nats_url, "relay")
    # Throughput: the high_throughput preset's relay options; the semaphore raw gets
    # the same number of PubAcks in flight.
    bulk = cfg.with_(relay=PRESETS["high_throughput"]["relay"])
    nc = await nats.connect(nats_url)
    engine = create_async_engine(database_url, pool_size=PRODUCERS + 4)
    stream, subject = cfg.stream_name, cfg.subjects.publish
    try:
        await create_stream(nc, cfg)
        await create_all(engine, models=[BenchOrg])  # its capture trigger too
        drained: list[str] = []
        raw_cpu, relay_cpu = CpuMeter(), CpuMeter()

        async def fast() -> float:
            batch = messages(cfg, N)
            with raw_cpu.span():
                return await raw.publish_async(nc, stream, subject, batch)

        async def sem() -> float:
            return await raw.publish_semaphore(
                nc, stream, subject, messages(cfg, N), bulk.relay.max_in_flight
            )

        async def ours() -> float:
            return await _relay_drain(bulk, nc, engine, N, drained, relay_cpu)

        rounds = await interleaved(runs(), fast, sem, ours)
        lines = ratio_lines(
            "relay_vs_publish_async_ratio",
            median_ratio((fast, ours) for fast, _, ours in rounds),
            base="relay_publish_async_events_per_s",
            ours="relay_events_per_s",
            unit="events/s",
        )
        lines += ratio_lines(
            "relay_vs_raw_ratio",
            median_ratio((sem, ours) for _, sem, ours in rounds),
            base="relay_raw_events_per_s",
            ours=None,
            unit="events/s",
        )
        lines += [
            raw_cpu.line("relay_publish_async_cpu_percent"),
            relay_cpu.line("relay_drain_cpu_percent"),
        ]
        steady: list[str] = []
        lines += await _latency(cfg, nc, engine, steady)
        stored = await stored_ids(nc, stream, subject)
        for name, ids in (("drain", drained), ("latency", steady)):
            delivery = check_delivery(ids, stored)
            lines += [
                (f"relay_{name}_lost", float(delivery.lost), f"of {delivery.expected}"),
                (f"relay_{name}_duplicated", float(delivery.duplicated), "events"),
            ]
            if delivery.lost or delivery.duplicated or not delivery.expected:
                raise DeliveryError(f"relay {name}: {delivery}")
        return lines
    finally:
        await delete_stream(nc, cfg)
        await nc.close()
        await engine.dispose()
