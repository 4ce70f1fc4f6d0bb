"""Hostile bodies in a burst: each poison delivery is dead-lettered ``malformed`` on its
first delivery, alone; every other delivery of its batch is applied and acked.

Real nats-server and PostgreSQL.  The burst is published before the consumer starts,
so a pull consumer receives it in one fetch (``batch_size`` is larger than the burst);
with ``concurrency=2`` the receive loop partitions it across two workers.  Nothing
may depend on a redelivery: every dead letter records delivery 1 and the consumer
counts no redelivery at all.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from consumer_support import Stack, build_stack, close_stack, make_config, org_event, wait_until
from sqlalchemy.ext.asyncio import AsyncSession

from bridge.config import BridgeConfig, ConsumerOptions
from bridge.envelope import MSG_ID_HEADER, Envelope
from bridge.testing import NatsServer

MAX_BODY = 16 * 1024  # the burst's configured consumer.max_body_bytes

#: (name, what the dead letter's error message must mention)
POISON_KINDS: tuple[tuple[str, str], ...] = (
    ("deep_json_array", "max_json_depth"),
    ("deep_json_in_payload", "max_json_depth"),
    ("oversized_body", "max_body_bytes"),
    ("long_resource_id", "resource_id"),
    ("long_event_type", "event_type"),
    ("nul_in_resource_id", "resource_id"),
    ("not_utf8", "UTF-8"),
    ("nan_in_payload", "NaN"),
    ("huge_float", "finite"),
    ("huge_int", "integer"),
    ("duplicate_keys", "duplicate key"),
    ("timestamp_overflow", "occurred_at"),
    ("urn_event_id", "event_id"),
)


def _body(env: Envelope, **changes: Any) -> dict[str, Any]:
    body = env.to_dict()
    body.update(changes)
    return body


def poison(cfg: BridgeConfig, kind: str) -> tuple[bytes, dict[str, str]]:
    """One hostile (body, headers) of ``kind``; otherwise a plausible envelope."""
    env = org_event(cfg, f"poison-{kind}", version=1)
    headers = env.headers()
    encode = json.dumps
    if kind == "deep_json_array":
        return b"[" * 5_000 + b"]" * 5_000, {}  # 5 times the recursion limit
    if kind == "deep_json_in_payload":
        text = encode(_body(env, payload={"x": "DEEP"})).replace(
            '"DEEP"', "[" * 5_000 + "]" * 5_000
        )
        return text.encode(), headers
    if kind == "oversized_body":
        return encode(_body(env, payload={"pad": "x" * (MAX_BODY * 2)})).encode(), headers
    if kind == "long_resource_id":
        return encode(_body(env, resource_id="r" * 300)).encode(), headers
    if kind == "long_event_type":
        return encode(_body(env, event_type="organization." + "u" * 200)).encode(), headers
    if kind == "nul_in_resource_id":
        return encode(_body(env, resource_id="r\u0000x")).encode(), headers
    if kind == "not_utf8":
        return encode(_body(env, payload={"name": "PLACEHOLDER"})).encode().replace(
            b"PLACEHOLDER", b"\xff\xfe\xfa"
        ), headers
    if kind == "nan_in_payload":
        return encode(_body(env, payload={"version": float("nan")})).encode(), headers
    if kind == "huge_float":
        return encode(_body(env, payload={"version": 1})).replace(
            '"version": 1', '"version": 1e999'
        ).encode(), headers
    if kind == "huge_int":
        return encode(_body(env, payload={"version": 10**40})).encode(), headers
    if kind == "duplicate_keys":
        text = encode(_body(env))
        return (text[:-1] + f', "event_id": "{uuid.uuid4()}"}}').encode(), headers
    if kind == "timestamp_overflow":
        return encode(_body(env, occurred_at="0001-01-01T00:00:00+14:00")).encode(), headers
    if kind == "urn_event_id":
        urn = f"urn:uuid:{env.event_id}"
        return encode(_body(env, event_id=urn)).encode(), {MSG_ID_HEADER: urn}
    raise AssertionError(kind)


@pytest.fixture(params=[("pull", 1), ("push", 1), ("pull", 2), ("push", 2)], ids=str)
async def burst_stack(
    request: pytest.FixtureRequest, nats_server: NatsServer, unique: str, database_url: str
) -> AsyncIterator[Stack]:
    mode, concurrency = request.param
    cfg = make_config(
        nats_server.url,
        unique,
        consumer_mode=mode,
        consumer=ConsumerOptions(
            batch_size=64, fetch_timeout=0.5, concurrency=concurrency,
            max_body_bytes=MAX_BODY,
        ),
    )  # fmt: skip
    stack = await build_stack(cfg, database_url)
    yield stack
    await close_stack(stack)


async def test_poison_in_a_burst_is_dead_lettered_alone_on_its_first_delivery(
    burst_stack: Stack,
) -> None:
    stack = burst_stack
    applied: list[str] = []

    async def handler(session: AsyncSession, env: Envelope) -> None:
        applied.append(env.resource_id)

    stack.router.on_resource("organization", handler)
    good: list[str] = []
    poison_seqs: dict[int, tuple[str, str]] = {}
    for i, (kind, mention) in enumerate(POISON_KINDS):
        for j in range(2):  # good events around every poison message, same batch
            env = org_event(stack.cfg, f"good-{i}-{j}", version=1)
            await stack.publish(env)
            good.append(env.resource_id)
        body, headers = poison(stack.cfg, kind)
        poison_seqs[await stack.publish_raw(body, headers)] = (kind, mention)
    consumer = await stack.start_consumer()

    async def settled() -> bool:  # every delivery acked or terminated (counted after that)
        return sum(consumer.stats().outcomes.values()) >= len(good) + len(poison_seqs)

    await wait_until(settled, timeout=15)
    assert sorted(applied) == sorted(good)  # each once
    letters = await stack.dead_letters.list(limit=100)
    assert len(letters) == len(poison_seqs)
    for letter in letters:
        kind, mention = poison_seqs[letter.original_seq]
        assert letter.reason == "malformed", (kind, letter.reason, letter.error_message)
        assert letter.deliveries == 1, kind
        assert letter.error_class == "EnvelopeError", kind
        assert mention in letter.error_message, (kind, letter.error_message)
    stats = consumer.stats()
    assert stats.outcomes == {"acked": len(good), "dead_lettered": len(poison_seqs)}
    assert stats.redeliveries == 0 and stats.task_restarts == 0
    counts = await stack.processor.counts()
    assert (counts.processed, counts.failed) == (len(good), 0)
    assert Counter(letter.reason for letter in letters) == {"malformed": len(POISON_KINDS)}
