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
  row, and a ``schema_version`` newer than the consumer knows.

After quiescence the usual checks hold (every acked write on both sides once, same state,
nothing applied twice — :mod:`fault_checker`), every poison message is a dead letter
with its own reason (exactly the expected set, nothing else dead-lettered) and its inbox
record, where it has an event id, is ``dead_lettered``; the consumers counted every
republished copy as a duplicate.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from contextlib import AsyncExitStack

import nats
import pytest
from fault_scenario import FaultLog, run_scenario
from fault_stack import Side, fast_config, in_process_pair
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from bridge.envelope import MSG_ID_HEADER, Envelope
from bridge.subjects import Subjects
from bridge.testing import NatsServer, PostgresServer

pytestmark = pytest.mark.faults

DUPLICATE_WINDOW = 1.0
COPIES_PER_ROUND = 25

EXPECTED_DEAD_LETTERS = Counter(
    {
        "malformed": 3,
        "unknown_event_type": 1,
        "invalid_payload": 2,
        "unsupported_schema_version": 1,
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
            resource_id=str(payload.get("id", uuid.uuid4())),
            payload=payload,
            **extra,  # type: ignore[arg-type]
        )

    org_id = str(uuid.uuid4())
    not_a_row = envelope("organization.updated", {"id": org_id, "name": 7})
    user_without_fields = envelope("user.created", {"id": str(uuid.uuid4())})
    unknown = envelope("widget.created", {"id": str(uuid.uuid4())})
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
    copies: dict[str, int] = {}
    async with AsyncExitStack() as stack:
        deployment = await in_process_pair(
            stack, postgres, unique, stream=stream, nats_urls=urls,
            duplicate_window=DUPLICATE_WINDOW,
        )  # fmt: skip
        a = deployment.a
        nc = await nats.connect(list(urls))
        stack.push_async_callback(nc.close)
        js = nc.jetstream(timeout=5)
        a_to_b = Subjects(a.app, deployment.b.app)

        async def inject(faults: FaultLog) -> None:
            for body, headers in poison_messages(a.app):
                ack = await js.publish(a_to_b.publish, body, headers=headers or None)
                injected.add(ack.seq)
            faults.note("poison", f"{a_to_b.publish}", messages=len(injected))
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
            title="Duplicate deliveries past the dedup window and poison messages mid-load",
            topology="2 in-process services, 1 nats-server, local PostgreSQL",
            config=fast_config(duplicate_window=DUPLICATE_WINDOW),
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
    assert result.passed, result.failure_message()
    assert result.load["acked"] >= 100
    assert result.dead_letters == dict(EXPECTED_DEAD_LETTERS)
    assert len(injected) == sum(EXPECTED_DEAD_LETTERS.values())
    # Copies went out in both directions and each receiver absorbed every one in its inbox.
    assert copies and all(n > 0 for n in copies.values()), copies
    for receiver, n in copies.items():
        assert seen[receiver] >= n, (receiver, seen[receiver], n)
    assert result.duplicates_published >= sum(copies.values())
    assert result.duplicates_applied == 0
