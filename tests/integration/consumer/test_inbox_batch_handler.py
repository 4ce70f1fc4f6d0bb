"""Batch handlers (Router.on_batch) in InboxProcessor, on a real nats-server and PostgreSQL.

The optimistic attempt calls a batch handler once per run of consecutive
deliveries of its resource type; when a call raises, the attempt is rolled back
and every delivery runs alone (``handler(session, [envelope])``) with its own
savepoint, decided exactly like a per-event handler's.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence

import pytest
from consumer_support import Stack, build_stack, close_stack, make_config, org_event, record_effect
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from test_inbox import fetch
from test_inbox_optimistic import count, effects_by_event, publish_and_fetch, statements

from bridge.config import BridgeConfig
from bridge.envelope import Envelope
from bridge.errors import Reject, Retry
from bridge.testing import NatsServer
from bridge.transport.delivery import Outcome


class Recorder:
    """A batch handler that records one effect per envelope (one statement per call)."""

    def __init__(self, fail_on: str | None = None, failure: str = "retry") -> None:
        self.calls: list[list[str]] = []
        self.fail_on = fail_on
        self.failure = failure

    async def __call__(self, session: AsyncSession, envelopes: Sequence[Envelope]) -> None:
        self.calls.append([f"{e.resource_type}:{e.payload.get('tag')}" for e in envelopes])
        await session.execute(
            text(
                "INSERT INTO effects (event_id, resource_id, version) "
                "SELECT * FROM unnest(CAST(:e AS text[]), CAST(:r AS text[]), CAST(:v AS int[]))"
            ),
            {
                "e": [e.event_id for e in envelopes],
                "r": [e.resource_id for e in envelopes],
                "v": [int(e.payload.get("version", 0)) for e in envelopes],
            },
        )
        for env in envelopes:
            if self.fail_on is not None and env.payload.get("tag") == self.fail_on:
                if self.failure == "retry":
                    raise Retry("parent missing")
                raise Reject("domain taken", reason="conflict")


def event(cfg: BridgeConfig, resource: str, rid: str, tag: str, **payload: object) -> Envelope:
    return org_event(cfg, rid, event_type=f"{resource}.updated", tag=tag, **payload)


async def test_one_call_per_run_of_a_resource_in_delivery_order(stack: Stack) -> None:
    handler = Recorder()
    stack.router.on_batch("organization", handler)
    stack.router.on_batch("user", handler)
    stack.router.on("audit.created", record_effect)  # per-event, ends a run
    cfg = stack.cfg
    events = [
        event(cfg, "organization", "o1", "o1"),
        event(cfg, "organization", "o2", "o2"),
        event(cfg, "organization", "o1", "o1b"),
        event(cfg, "user", "u1", "u1"),
        event(cfg, "user", "u2", "u2"),
        org_event(cfg, "a1", event_type="audit.created"),
        event(cfg, "organization", "o3", "o3"),
    ]
    batch = await publish_and_fetch(stack, events)
    with statements(stack) as seen:
        assert await stack.processor.process_batch(batch) == [Outcome.ACKED] * 7

    assert handler.calls == [
        ["organization:o1", "organization:o2", "organization:o1b"],
        ["user:u1", "user:u2"],
        ["organization:o3"],
    ]
    assert count(seen, "SAVEPOINT") == 0
    assert count(seen, "INSERT INTO EFFECTS") == 4  # 3 batch calls + 1 per-event handler
    assert (stack.processor.optimistic_batches, stack.processor.fallback_batches) == (1, 0)
    assert await effects_by_event(stack) == {e.event_id: 1 for e in events}
    assert all(d.kinds == ["ack"] for d in batch)
    # the same events again (republished without dedup): duplicates, no call
    sub = await stack.pull_sub()
    for env in events[:2]:
        await stack.publish_raw(env.to_bytes())
    again = await fetch(stack, sub, 2)
    assert await stack.processor.process_batch(again) == [Outcome.DUPLICATE] * 2
    assert len(handler.calls) == 3


@pytest.mark.parametrize("failure", ["retry", "reject"])
async def test_one_bad_envelope_is_decided_alone_and_the_others_applied_once(
    stack: Stack, failure: str
) -> None:
    handler = Recorder(fail_on="r2", failure=failure)
    stack.router.on_batch("organization", handler)
    events = [event(stack.cfg, "organization", f"r{i}", f"r{i}") for i in range(5)]
    batch = await publish_and_fetch(stack, events)
    with statements(stack) as seen:
        outcomes = await stack.processor.process_batch(batch)

    failed = Outcome.RETRIED if failure == "retry" else Outcome.DEAD_LETTERED
    assert outcomes == [Outcome.ACKED, Outcome.ACKED, failed, Outcome.ACKED, Outcome.ACKED]
    # the run's call failed and cannot say which envelope: each then runs alone
    assert handler.calls[0] == [f"organization:r{i}" for i in range(5)]
    assert handler.calls[1:] == [[f"organization:r{i}"] for i in range(5)]
    assert count(seen, "SAVEPOINT") == 5
    assert (stack.processor.optimistic_batches, stack.processor.fallback_batches) == (0, 1)
    assert await effects_by_event(stack) == {events[i].event_id: 1 for i in (0, 1, 3, 4)}
    assert [d.kinds for i, d in enumerate(batch) if i != 2] == [["ack"]] * 4
    status, attempts, last_error = await stack.row(
        "SELECT status, attempts, last_error FROM bridge_inbox WHERE event_id = :e",
        e=events[2].event_id,
    )
    if failure == "retry":
        assert batch[2].calls == [("nak", stack.cfg.backoff[0])]
        assert (status, attempts, last_error) == ("failed", 1, "Retry: parent missing")
    else:
        assert batch[2].kinds == ["term"]
        assert status == "dead_lettered"
        [letter] = await stack.dead_letters.list()
        assert (letter.reason, letter.envelope().event_id) == ("conflict", events[2].event_id)
        assert (letter.error_class, letter.error_message) == ("Reject", "domain taken")


async def test_a_failing_run_of_one_is_not_called_again(stack: Stack) -> None:
    handler = Recorder(fail_on="bad")
    stack.router.on_batch("organization", handler)
    stack.router.on_batch("user", handler)
    cfg = stack.cfg
    events = [
        event(cfg, "user", "u1", "u1"),
        event(cfg, "organization", "o1", "bad"),
        event(cfg, "user", "u2", "u2"),
    ]
    batch = await publish_and_fetch(stack, events)
    outcomes = await stack.processor.process_batch(batch)
    assert outcomes == [Outcome.ACKED, Outcome.RETRIED, Outcome.ACKED]
    # like a per-event handler: the exception of the attempt decides the delivery
    assert handler.calls == [["user:u1"], ["organization:bad"], ["user:u1"], ["user:u2"]]


async def test_one_records_events_keep_their_order_and_later_ones_wait_after_a_failure(
    stack: Stack,
) -> None:
    handler = Recorder(fail_on="x4")
    stack.router.on_batch("organization", handler)
    cfg = stack.cfg
    first = [event(cfg, "organization", "x", f"x{v}", version=v) for v in (1, 2, 3)]
    batch = await publish_and_fetch(stack, first)
    assert await stack.processor.process_batch(batch) == [Outcome.ACKED] * 3
    assert handler.calls == [["organization:x1", "organization:x2", "organization:x3"]]
    versions = await stack.scalar("SELECT array_agg(version ORDER BY id) FROM effects")
    assert versions == [1, 2, 3]

    handler.calls.clear()
    second = [
        event(cfg, "organization", "y", "y1", version=1),
        event(cfg, "organization", "x", "x4", version=4),
        event(cfg, "organization", "x", "x5", version=5),
    ]
    batch = await publish_and_fetch(stack, second)
    outcomes = await stack.processor.process_batch(batch)
    # x5 must not overtake x4: it is NAKed with x4's delay without running
    assert outcomes == [Outcome.ACKED, Outcome.RETRIED, Outcome.RETRIED]
    assert handler.calls[1:] == [["organization:y1"], ["organization:x4"]]
    assert batch[2].calls == [("nak", cfg.backoff[0])]
    assert await effects_by_event(stack) == Counter({e.event_id: 1 for e in [*first, second[0]]})


async def test_a_user_and_its_organization_in_one_batch(stack: Stack) -> None:
    """The users' batch handler needs the organization: it sees the one applied
    earlier in the same transaction, and a user before its organization is retried."""
    calls: list[list[str]] = []

    async def users(session: AsyncSession, envelopes: Sequence[Envelope]) -> None:
        calls.append([e.resource_id for e in envelopes])
        for env in envelopes:
            org = str(env.payload["org"])
            known = await session.scalar(
                text("SELECT count(*) FROM effects WHERE resource_id = :r"), {"r": org}
            )
            if not known:
                raise Retry(f"organization {org} has not arrived yet")
        await Recorder()(session, envelopes)

    stack.router.on_batch("organization", Recorder())
    stack.router.on_batch("user", users)
    cfg = stack.cfg
    events = [
        event(cfg, "organization", "o1", "o1"),
        event(cfg, "user", "u1", "u1", org="o1"),
        event(cfg, "user", "u2", "u2", org="o2"),  # before its organization
        event(cfg, "organization", "o2", "o2"),
        event(cfg, "user", "u3", "u3", org="o2"),
    ]
    batch = await publish_and_fetch(stack, events)
    outcomes = await stack.processor.process_batch(batch)
    acked, retried = Outcome.ACKED, Outcome.RETRIED
    assert outcomes == [acked, acked, retried, acked, acked]
    assert calls[0] == ["u1", "u2"]  # the failing run; then one by one
    assert await effects_by_event(stack) == {events[i].event_id: 1 for i in (0, 1, 3, 4)}

    # the retried user comes back after its organization: applied, on the fast path
    [again] = await fetch(stack, await stack.pull_sub(), 1, timeout=10)
    assert again.num_delivered == 2
    assert await stack.processor.process_batch([again]) == [Outcome.ACKED]
    assert (await effects_by_event(stack))[events[2].event_id] == 1


async def test_redelivery_after_a_crash_before_the_commit_applies_each_once(
    nats_server: NatsServer, unique: str, database_url: str
) -> None:
    cfg = make_config(nats_server.url, unique, ack_wait=1.0)
    stack = await build_stack(cfg, database_url)
    try:
        crash = True

        async def handler(session: AsyncSession, envelopes: Sequence[Envelope]) -> None:
            await Recorder()(session, envelopes)
            if crash:
                raise asyncio.CancelledError  # the process is going down mid-batch

        stack.router.on_batch("organization", handler)
        events = [event(cfg, "organization", f"c{i}", f"c{i}") for i in range(4)]
        sub = await stack.pull_sub()
        for env in events:
            await stack.publish(env)
        batch = await fetch(stack, sub, 4)
        with pytest.raises(asyncio.CancelledError):
            await stack.processor.process_batch(batch)
        assert all(d.kinds == [] for d in batch)  # nothing acked
        assert await stack.effects() == 0  # nothing committed
        assert (await stack.processor.counts()).total == 0

        crash = False
        redelivered = await fetch(stack, sub, 4, timeout=10)  # after ack_wait
        assert {d.num_delivered for d in redelivered} == {2}
        redelivered[0].drop_ack = True  # committed, but this ack is lost
        assert await stack.processor.process_batch(redelivered) == [Outcome.ACKED] * 4
        [third] = await fetch(stack, sub, 1, timeout=10)
        assert await stack.processor.process_batch([third]) == [Outcome.DUPLICATE]
        assert await effects_by_event(stack) == {e.event_id: 1 for e in events}
    finally:
        await close_stack(stack)
