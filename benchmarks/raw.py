"""Raw baselines: the fastest *correct* way to do each job with nats-py and asyncpg alone.

"Correct" means the baseline gives the same guarantee the bridge gives for that step,
so a ratio to it measures the bridge's overhead, not a corner the baseline cut:

- :func:`publish_async` (relay baseline): ``js.publish_async`` with ``Nats-Msg-Id`` per
  message and at most ``MAX_PENDING`` (nats-py's default, 4000) PubAcks outstanding;
  every PubAck is awaited and checked (an error or a missing PubAck raises).
- :func:`publish_semaphore` (the relay's *previous* baseline, kept so the history of
  ``relay_vs_raw_ratio`` stays comparable): ``js.publish`` per message behind a
  semaphore of ``max_in_flight``.
- :func:`end_to_end` (end-to-end baseline): the events are committed into a table on A
  (asyncpg, one transaction, like the bridge's scale run); then, timed, chunks of unsent
  rows are read, published with ``publish_async`` (PubAcks checked) and marked sent,
  while a pull consumer fetches batches (pull requests over core NATS, the fetch the
  bridge uses: :class:`~bridge.transport.pull_requests.BatchPuller`, faster than
  nats-py's ``fetch``), decodes each body, upserts the batch's records
  on B in one asyncpg statement, commits and acks each message — the work of outbox →
  relay → inbox + handler, batched the same way, without the bridge (no inbox record,
  no lease, no ordering per record).

Each returns events per second for ``n`` events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid

import asyncpg
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig

from bridge.envelope import MSG_ID_HEADER
from bridge.testing import to_plain_url
from bridge.transport.pull_requests import BatchPuller

MAX_PENDING = 4000
ACK_TIMEOUT = 30.0
DEADLINE = 300.0


async def _await_pubacks(futures: list[asyncio.Future[object]]) -> None:
    """Every PubAck of ``futures`` arrived and none is an error (raises otherwise)."""
    async with asyncio.timeout(ACK_TIMEOUT):
        results = await asyncio.gather(*futures, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(futures)} publishes failed: {errors[0]!r}")


async def publish_async(
    nc: Client, stream: str, subject: str, messages: list[tuple[str, bytes]]
) -> float:
    js = nc.jetstream(publish_async_max_pending=MAX_PENDING)
    started = time.perf_counter()
    futures = [
        await js.publish_async(subject, data, stream=stream, headers={MSG_ID_HEADER: event_id})
        for event_id, data in messages
    ]
    await _await_pubacks(futures)  # type: ignore[arg-type]
    return len(messages) / (time.perf_counter() - started)


async def publish_semaphore(
    nc: Client, stream: str, subject: str, messages: list[tuple[str, bytes]], in_flight: int
) -> float:
    js = nc.jetstream()
    semaphore = asyncio.Semaphore(in_flight)

    async def one(event_id: str, data: bytes) -> None:
        async with semaphore:
            await js.publish(subject, data, stream=stream, headers={MSG_ID_HEADER: event_id})

    started = time.perf_counter()
    await asyncio.gather(*(one(event_id, data) for event_id, data in messages))
    return len(messages) / (time.perf_counter() - started)


E2E_TABLES = """
CREATE TABLE IF NOT EXISTS raw_events (
    id bigserial PRIMARY KEY, event_id text NOT NULL, subject text NOT NULL,
    body bytea NOT NULL, sent boolean NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS raw_events_pending ON raw_events (id) WHERE NOT sent;
CREATE TABLE IF NOT EXISTS raw_orgs (id text PRIMARY KEY, body bytea NOT NULL);
"""


async def end_to_end(
    nc: Client,
    url_a: str,
    url_b: str,
    stream: str,
    subject: str,
    messages: list[tuple[str, bytes]],
    *,
    chunk: int = 1000,
    batch: int = 256,
) -> float:
    """Events/s from the moment ``messages`` are committed on A (one transaction, like
    the bridge's scale run) until the last one is upserted on B and acked."""
    a = await asyncpg.connect(to_plain_url(url_a))
    b = await asyncpg.connect(to_plain_url(url_b))
    js = nc.jetstream(publish_async_max_pending=MAX_PENDING)
    durable = f"rawe2e{uuid.uuid4().hex[:8]}"
    n = len(messages)
    puller = BatchPuller(nc, f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}")
    try:
        for conn in (a, b):
            await conn.execute(E2E_TABLES)
        await js.add_consumer(
            stream,
            ConsumerConfig(
                durable_name=durable, ack_policy=AckPolicy.EXPLICIT, filter_subject=subject
            ),
        )
        await puller.start()
        async with a.transaction():
            await a.executemany(
                "INSERT INTO raw_events (event_id, subject, body) VALUES ($1, $2, $3)",
                [(event_id, subject, body) for event_id, body in messages],
            )

        async def relay() -> None:
            # Claim a chunk of unsent rows, publish it (PubAcks checked), mark it sent.
            while True:
                rows = await a.fetch(
                    "SELECT id, event_id, subject, body FROM raw_events WHERE NOT sent "
                    "ORDER BY id LIMIT $1",
                    chunk,
                )
                if not rows:
                    return
                futures = [
                    await js.publish_async(
                        row["subject"], row["body"], stream=stream,
                        headers={MSG_ID_HEADER: row["event_id"]},
                    )
                    for row in rows
                ]  # fmt: skip
                await _await_pubacks(futures)  # type: ignore[arg-type]
                await a.execute(
                    "UPDATE raw_events SET sent = true WHERE id = ANY($1::bigint[])",
                    [row["id"] for row in rows],
                )

        async def apply() -> int:
            # Fetch a batch, upsert its records on B in one statement, commit, ack each.
            done = 0
            while done < n and time.perf_counter() - started < DEADLINE:
                msgs = await puller.fetch(batch, timeout=1.0)
                latest = {json.loads(m.data)["resource_id"]: m.data for m in msgs}
                async with b.transaction():
                    await b.execute(
                        "INSERT INTO raw_orgs (id, body) "
                        "SELECT * FROM unnest($1::text[], $2::bytea[]) "
                        "ON CONFLICT (id) DO UPDATE SET body = excluded.body",
                        list(latest),
                        list(latest.values()),
                    )
                for msg in msgs:
                    await msg.ack()
                done += len(msgs)
            await nc.flush()
            return done

        started = time.perf_counter()
        done, _ = await asyncio.gather(apply(), relay())
        elapsed = time.perf_counter() - started
        if done < n:
            raise RuntimeError(f"raw end-to-end applied {done} of {n} in {DEADLINE} s")
        return n / elapsed
    finally:
        await puller.stop()
        with contextlib.suppress(Exception):
            await js.delete_consumer(stream, durable)
        await a.close()
        await b.close()
