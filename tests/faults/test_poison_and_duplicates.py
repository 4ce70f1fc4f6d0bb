"""Scenario: duplicate deliveries and poison messages injected mid-load.

Both services run in this process (real lifespans: relay + pull consumer).  While API
writes go on on both sides, the scenario publishes straight onto the stream, bypassing
every outbox:

- **duplicates the server cannot catch**: the stream's duplicate window is 1 s, so
  copies of already-applied events (same body, same ``Nats-Msg-Id``) republished more
  than a second later are stored and delivered again — only the consumer's inbox stands
  between them and a second application;
- **poison**: bodies that are not JSON, envelopes missing fields, a ``Nats-Msg-Id``
  that disagrees with the body, an event type nobody handles, payloads that are not a
  row, and a ``schema_version`` newer than the consumer knows;
- **poison in a burst**: B's consumer is paused while A's load goes on, and hostile
  bodies — JSON nested thousands deep, a body over ``consumer.max_body_bytes``, ids and
  event types longer than the inbox's columns, a NUL in an id, non-UTF-8, ``NaN`` and
  numbers out of range, duplicate keys, a timestamp that overflows, a ``urn:uuid:``
  event id — are published one by one between A's real events; B resumes and receives
  them interleaved with the good traffic in ONE fetch.  Each must be dead-lettered
  ``malformed`` on its first delivery, alone, while every good event of that fetch is
  applied (the checker's no-loss rule), and no consumer task may die.

After quiescence the usual checks hold (every acked write on both sides once, same state,
nothing applied twice — :mod:`fault_checker`), every poison message is a dead letter
with its own reason (exactly the expected set, nothing else dead-lettered) and its inbox
record, where it has an event id, is ``dead_lettered``; the consumers counted every
republished copy as a duplicate.
"""

from __future__ import annotations

import asyncio
import functools
import json
import uuid
from collections import Counter
from contextlib import AsyncExitStack

import nats
import pytest
from fault_scenario import FaultLog, run_scenario
from fault_stack import Side, fast_config, in_process_pair, new_id
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from bridge.config import ConsumerOptions
from bridge.envelope import MSG_ID_HEADER, Envelope, format_timestamp, utcnow
from bridge.routing.dlq import DeadLetters
from bridge.subjects import Subjects
from bridge.testing import NatsServer, PostgresServer
from bridge.transport.publisher import Publisher

pytestmark = pytest.mark.faults

DUPLICATE_WINDOW = 1.0
COPIES_PER_ROUND = 25
#: The burst's consumer settings: every pending message fits one fetch, and a body
#: well under the server's max_payload can still be over the consumer's limit.
BURST_FETCH = 256
MAX_BODY = 64 * 1024
GOOD_BETWEEN = 2  # A's real events published between two poison messages of the burst

#: (kind, what the dead letter's error message names) of the burst's hostile bodies.
BURST_KINDS: tuple[tuple[str, str], ...] = (
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

FAR_FUTURE = "9999-12-31T23:59:59.999999Z"
#: (kind, what the dead letter's error message names) of the far-future versions.
FAR_FUTURE_KINDS: tuple[tuple[str, str], ...] = (
    ("far_future_occurred_at", "occurred_at"),
    ("far_future_updated_at", "updated_at"),
)


EXPECTED_DEAD_LETTERS = Counter(
    {
        "malformed": 3 + len(BURST_KINDS),
        "unknown_event_type": 1,
        "invalid_payload": 2,
        "unsupported_schema_version": 1,
        "future_version": len(FAR_FUTURE_KINDS),
    }
)


def poison_messages(producer: str) -> list[tuple[bytes, dict[str, str]]]:
    """(body, headers) of every poison kind; reasons in :data:`EXPECTED_DEAD_LETTERS`."""

    def envelope(event_type: str, payload: dict[str, object], **extra: object) -> Envelope:
        resource = event_type.split(".", maxsplit=1)[0]
        return Envelope(
            event_type=event_type,
            producer=producer,
            resource_type=resource,
            resource_id=str(payload.get("id", new_id())),
            payload=payload,
            **extra,  # type: ignore[arg-type]
        )

    org_id = new_id()
    not_a_row = envelope("organization.updated", {"id": org_id, "name": 7})
    user_without_fields = envelope("user.created", {"id": new_id()})
    unknown = envelope("widget.created", {"id": new_id()})
    too_new = envelope(
        "organization.updated", {"id": org_id, "name": "From the future"}, schema_version=99
    )
    mismatch = envelope("organization.updated", {"id": org_id})
    return [
        (b"this is not json {", {MSG_ID_HEADER: str(uuid.uuid4())}),  # malformed
        (json.dumps({"event_id": str(uuid.uuid4())}).encode(), {}),  # malformed: fields
        (mismatch.to_bytes(), {MSG_ID_HEADER: str(uuid.uuid4())}),  # malformed: msg id
        (unknown.to_bytes(), unknown.headers()),  # unknown_event_type
        (not_a_row.to_bytes(), not_a_row.headers()),  # invalid_payload
        (user_without_fields.to_bytes(), user_without_fields.headers()),  # invalid_payload
        (too_new.to_bytes(), too_new.headers()),  # unsupported_schema_version
    ]


def _encoded(body: dict[str, object], **changes: object) -> bytes:
    return json.dumps({**body, **changes}).encode()


def burst_poison(producer: str) -> list[tuple[str, bytes, dict[str, str]]]:
    """(kind, body, headers) of every :data:`BURST_KINDS` body, as the peer would send them;
    apart from the one hostile trait each is a plausible organization event."""
    out: list[tuple[str, bytes, dict[str, str]]] = []
    for kind, _mention in BURST_KINDS:
        env = Envelope(
            event_type="organization.updated",
            producer=producer,
            resource_type="organization",
            resource_id=str(new_id()),
            payload={"name": "Poison", "domain": "poison.test"},
        )
        body, headers = env.to_dict(), env.headers()
        with_ = functools.partial(_encoded, body)
        if kind == "deep_json_array":
            data, headers = b"[" * 20_000 + b"]" * 20_000, {}
        elif kind == "deep_json_in_payload":
            data = with_(payload={"x": "DEEP"}).replace(b'"DEEP"', b"[" * 20_000 + b"]" * 20_000)
        elif kind == "oversized_body":
            data = with_(payload={"pad": "x" * (MAX_BODY * 3)})
        elif kind == "long_resource_id":
            data = with_(resource_id="r" * 5_000)
        elif kind == "long_event_type":
            data = with_(event_type="organization." + "u" * 500)
        elif kind == "nul_in_resource_id":
            data = with_(resource_id=str(new_id()) + "\u0000")
        elif kind == "not_utf8":
            data = with_(payload={"name": "PLACEHOLDER"}).replace(b"PLACEHOLDER", b"\xff\xfe")
        elif kind == "nan_in_payload":
            data = with_(payload={"name": float("nan")})
        elif kind == "huge_float":
            data = with_(payload={"name": 1}).replace(b'"name": 1', b'"name": 1e999')
        elif kind == "huge_int":
            data = with_(payload={"name": 10**60})
        elif kind == "duplicate_keys":  # a second event id: which one would apply?
            data = with_()[:-1] + f', "event_id": "{uuid.uuid4()}"}}'.encode()
        elif kind == "timestamp_overflow":
            data = with_(occurred_at="0001-01-01T00:00:00+14:00")
        elif kind == "urn_event_id":
            urn = f"urn:uuid:{env.event_id}"
            data, headers = with_(event_id=urn), {MSG_ID_HEADER: urn}
        else:
            raise AssertionError(kind)
        out.append((kind, data, headers))
    return out


def far_future_poison(producer: str) -> list[tuple[str, bytes, dict[str, str]]]:
    """Well-formed organization events from the year 9999: one with a far-future
    ``occurred_at`` (the library's check), one with a far-future record ``updated_at`` in
    an otherwise valid row (the domain's check); each is a ``future_version`` dead letter."""
    now = format_timestamp(utcnow())
    out: list[tuple[str, bytes, dict[str, str]]] = []
    for kind, _mention in FAR_FUTURE_KINDS:
        oid = new_id()
        row = {"id": oid, "name": "From the future", "domain": f"f{oid}.future.test",
               "active": True, "created_at": now, "updated_at": now, "origin": producer,
               "deleted_at": None}  # fmt: skip
        extra: dict[str, str] = {}
        if kind == "far_future_occurred_at":
            extra["occurred_at"] = FAR_FUTURE
        else:
            row["updated_at"] = FAR_FUTURE
        env = Envelope(
            event_type="organization.created", producer=producer, resource_type="organization",
            resource_id=str(oid), payload=row, schema_version=2, **extra,  # type: ignore[arg-type]
        )  # fmt: skip
        out.append((kind, env.to_bytes(), env.headers()))
    return out


async def pending(js: nats.js.JetStreamContext, stream: str, durable: str) -> int:
    info = await js.consumer_info(stream, durable)
    return int(info.num_pending)


async def grow_by(
    js: nats.js.JetStreamContext, stream: str, durable: str, start: int, n: int
) -> int:
    """Wait (bounded) until ``durable`` has ``n`` more pending messages than ``start``."""
    deadline = asyncio.get_running_loop().time() + 10
    while (now := await pending(js, stream, durable)) < start + n:
        assert asyncio.get_running_loop().time() < deadline, "the load stopped publishing"
        await asyncio.sleep(0.02)
    return now


async def republish_copies(
    js: nats.js.JetStreamContext, stream: str, subject: str, limit: int, skip: set[int]
) -> int:
    """Publish again, byte for byte, up to ``limit`` stored events of ``subject``
    (not the poison in ``skip``)."""
    sub = await js.pull_subscribe(
        subject,
        stream=stream,
        config=ConsumerConfig(
            ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, mem_storage=True
        ),
    )
    try:
        stored = await sub.fetch(limit + len(skip), timeout=2)
    finally:
        await sub.unsubscribe()
    copies = 0
    for msg in stored:
        if msg.metadata.sequence.stream in skip or copies == limit:
            continue
        ack = await js.publish(subject, msg.data, headers=dict(msg.headers or {}))
        assert not ack.duplicate, "the duplicate window should have passed"
        copies += 1
    return copies


def duplicates_seen(side: Side) -> float:
    bridge = side.instances[0].app.state.service.bridge
    value = bridge.metrics.registry.get_sample_value(
        "bridge_deliveries_total", {"outcome": "duplicate"}
    )
    return float(value or 0.0)


async def test_duplicate_deliveries_and_poison_messages_mid_load(
    own_nats: NatsServer, postgres: PostgresServer, unique: str, results_dir, seed: int
) -> None:
    stream = f"faults-{unique}"
    urls = (own_nats.url,)
    injected: set[int] = set()
    burst: dict[int, tuple[str, str]] = {}  # stream seq -> (kind, what its error names)
    copies: dict[str, int] = {}
    consumer_options = ConsumerOptions(
        fetch_timeout=0.2, batch_size=BURST_FETCH, max_body_bytes=MAX_BODY
    )
    async with AsyncExitStack() as stack:
        deployment = await in_process_pair(
            stack, postgres, unique, stream=stream, nats_urls=urls,
            duplicate_window=DUPLICATE_WINDOW, consumer=consumer_options,
        )  # fmt: skip
        a, b = deployment.a, deployment.b
        nc = await nats.connect(list(urls))
        stack.push_async_callback(nc.close)
        js = nc.jetstream(timeout=5)
        a_to_b = Subjects(a.app, b.app)
        b_bridge = b.instances[0].app.state.service.bridge
        b_durable = Subjects(b.app, a.app).durable

        async def inject_burst(faults: FaultLog) -> None:
            # B stops fetching; A's load keeps publishing; the hostile bodies go in
            # between A's events; B resumes and gets all of it in one fetch.
            consumer = b_bridge.consumer
            await consumer.stop(timeout=5)
            count = await grow_by(js, stream, b_durable, await pending(js, stream, b_durable), 1)
            hostile = burst_poison(a.app) + far_future_poison(a.app)
            mentions = dict(BURST_KINDS + FAR_FUTURE_KINDS)
            for kind, body, headers in hostile:
                ack = await js.publish(a_to_b.publish, body, headers=headers or None)
                injected.add(ack.seq)
                burst[ack.seq] = (kind, mentions.get(kind, ""))
                count = await grow_by(js, stream, b_durable, count + 1, GOOD_BETWEEN)
            assert count <= BURST_FETCH, f"{count} pending: the burst would need two fetches"
            faults.note(
                "poison-burst", a_to_b.publish, messages=len(hostile), pending=count,
                fetch=BURST_FETCH, max_body_bytes=MAX_BODY,
            )  # fmt: skip
            await consumer.start()
            faults.note("consumer-resumed", b.app)

        async def inject(faults: FaultLog) -> None:
            for body, headers in poison_messages(a.app):
                ack = await js.publish(a_to_b.publish, body, headers=headers or None)
                injected.add(ack.seq)
            faults.note("poison", f"{a_to_b.publish}", messages=len(injected))
            await inject_burst(faults)
            for round_ in (1, 2):
                await asyncio.sleep(DUPLICATE_WINDOW + 0.5)  # past the server's window
                for side in deployment.sides:
                    subject = Subjects(side.app, side.peer).publish
                    n = await republish_copies(js, stream, subject, COPIES_PER_ROUND, injected)
                    copies[side.peer] = copies.get(side.peer, 0) + n
                faults.note(
                    "republish", "stream", round=round_, copies=sum(copies.values()),
                    duplicate_window=DUPLICATE_WINDOW,
                )  # fmt: skip

        result = await run_scenario(
            scenario="poison_and_duplicates",
            title=(
                "Duplicate deliveries past the dedup window, poison mid-load "
                "and a poison burst in one fetch"
            ),
            topology="2 in-process services, 1 nats-server, local PostgreSQL",
            config=fast_config(
                duplicate_window=DUPLICATE_WINDOW,
                consumer_batch_size=BURST_FETCH,
                consumer_max_body_bytes=MAX_BODY,
            ),
            deployment=deployment,
            inject=inject,
            results_dir=results_dir,
            seed=seed,
            after=1.5,
            converge_timeout=60.0,
            expected_dead_letters=EXPECTED_DEAD_LETTERS,
            injected=injected,
        )
        seen = {side.app: duplicates_seen(side) for side in deployment.sides}
        letters = await DeadLetters(b.config, js, Publisher(js, stream=stream)).list(limit=500)
        b_consumer = b_bridge.consumer.stats()
    assert result.passed, result.failure_message()
    # The burst: each hostile body is a malformed (or future_version) dead letter of its
    # FIRST delivery, naming what it broke; no consumer task died on any of them.
    by_seq = {letter.original_seq: letter for letter in letters}
    assert set(burst) <= set(by_seq), sorted(set(burst) - set(by_seq))
    for seq, (kind, mention) in burst.items():
        letter = by_seq[seq]
        reason = "future_version" if kind.startswith("far_future") else "malformed"
        assert (letter.reason, letter.deliveries) == (reason, 1), (kind, letter)
        assert mention in letter.error_message, (kind, letter.error_message)
    assert b_consumer.task_restarts == 0 and b_consumer.batch_errors == 0, b_consumer
    assert result.load["acked"] >= 100
    assert result.dead_letters == dict(EXPECTED_DEAD_LETTERS)
    assert len(injected) == sum(EXPECTED_DEAD_LETTERS.values())
    # Copies went out in both directions and each receiver absorbed every one in its inbox.
    assert copies and all(n > 0 for n in copies.values()), copies
    for receiver, n in copies.items():
        assert seen[receiver] >= n, (receiver, seen[receiver], n)
    assert result.duplicates_published >= sum(copies.values())
    assert result.duplicates_applied == 0
