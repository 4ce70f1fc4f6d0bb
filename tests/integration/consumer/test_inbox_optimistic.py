"""The optimistic batch path of InboxProcessor, on a real nats-server and PostgreSQL.

A fetched batch is applied in one transaction without savepoints; when a handler
raises or the commit fails, the transaction is rolled back and the batch re-run
with a savepoint per delivery.  SQL statements are observed with a SQLAlchemy
``before_cursor_execute`` listener (SAVEPOINT / RELEASE go through it; BEGIN and
COMMIT are DBAPI calls and do not).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from consumer_support import SpyDelivery, Stack, org_event, record_effect
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession
from test_inbox import fetch

from bridge.envelope import Envelope
from bridge.errors import Reject, Retry
from bridge.inbox.processor import InboxProcessor
from bridge.transport.delivery import Outcome

# deferred: inserting the same key twice succeeds, the COMMIT fails
ONCE_DDL = "CREATE TABLE once (k text, CONSTRAINT once_k UNIQUE (k) DEFERRABLE INITIALLY DEFERRED)"


@contextmanager
def statements(stack: Stack) -> Iterator[list[str]]:
    """Every SQL statement the stack's engine sends while the block runs."""
    seen: list[str] = []

    def listener(*args: Any) -> None:
        seen.append(str(args[2]).strip())  # (conn, cursor, statement, ...)

    engine = stack.engine.sync_engine
    event.listen(engine, "before_cursor_execute", listener)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", listener)


def count(seen: list[str], prefix: str) -> int:
    return sum(1 for statement in seen if statement.upper().startswith(prefix))


async def effects_by_event(stack: Stack) -> Counter[str]:
    async with stack.engine.connect() as conn:
        rows = await conn.execute(text("SELECT event_id, count(*) FROM effects GROUP BY 1"))
        return Counter({str(event_id): int(n) for event_id, n in rows})


async def publish_and_fetch(stack: Stack, events: list[Envelope]) -> list[SpyDelivery]:
    sub = await stack.pull_sub()
    for env in events:
        await stack.publish(env)
    batch = await fetch(stack, sub, len(events))
    await sub.unsubscribe()
    return batch


async def test_all_success_batch_commits_once_without_savepoints_then_acks(
    stack: Stack,
) -> None:
    stack.router.on("organization.created", record_effect)
    events = [org_event(stack.cfg, str(i)) for i in range(6)]
    batch = await publish_and_fetch(stack, events)
    committed_at_first_ack: list[int] = []

    async def first_ack() -> None:
        if not committed_at_first_ack:
            committed_at_first_ack.append(await stack.effects())  # another connection

    for delivery in batch:
        delivery.on_ack = first_ack
    with statements(stack) as seen:
        assert await stack.processor.process_batch(batch) == [Outcome.ACKED] * 6

    assert count(seen, "SAVEPOINT") == 0 and count(seen, "RELEASE") == 0
    # ONE inbox statement for the batch: the claim, which also reads the failed records
    # still waiting for a redelivery (per-record order, bridge.inbox._order) and turns
    # capture off for the transaction (a peer's change is never captured back)
    assert count(seen, "WITH WAITING AS") == 1
    assert sum("INSERT INTO BRIDGE_INBOX" in s.upper() for s in seen) == 1
    claim = next(s for s in seen if s.upper().startswith("WITH WAITING AS"))
    assert "set_config('bridge.capture', 'off', true)" in claim
    assert count(seen, "INSERT INTO EFFECTS") == 6
    # + first_ack's count(*); no set_config statement of its own any more
    assert count(seen, "SELECT SET_CONFIG") == 0
    assert count(seen, "SELECT") == 1 and len(seen) == 8
    assert (stack.processor.optimistic_batches, stack.processor.fallback_batches) == (1, 0)
    assert committed_at_first_ack == [6]  # nothing acked before the one commit
    assert all(d.kinds == ["ack"] for d in batch)

    # control: the same listener does see the savepoint path's statements
    savepoints = InboxProcessor(
        stack.cfg, stack.sessions, stack.router, stack.dead_letters, optimistic=False
    )
    more = await publish_and_fetch(stack, [org_event(stack.cfg, str(i)) for i in range(3)])
    with statements(stack) as seen:
        assert await savepoints.process_batch(more) == [Outcome.ACKED] * 3
    assert count(seen, "SAVEPOINT") == 3 and count(seen, "RELEASE SAVEPOINT") == 3
    assert savepoints.optimistic_batches == 0


async def test_the_optimistic_path_costs_the_same_statements_per_batch_whatever_its_size(
    stack: Stack,
) -> None:
    stack.router.on("organization.created", record_effect)
    per_batch: dict[int, int] = {}
    for size in (4, 32):
        batch = await publish_and_fetch(stack, [org_event(stack.cfg, str(i)) for i in range(size)])
        with statements(stack) as seen:
            assert await stack.processor.process_batch(batch) == [Outcome.ACKED] * size
        assert count(seen, "INSERT INTO EFFECTS") == size
        per_batch[size] = len(seen) - size  # the bridge's own statements
    # the claim (with the waiting look-up and capture off), once per batch: no round
    # trip grows per event
    assert per_batch == {4: 1, 32: 1}


@pytest.mark.parametrize("failure", ["retry", "reject"])
async def test_failure_in_the_middle_applies_the_others_once_and_settles_it_as_before(
    stack: Stack, failure: str
) -> None:
    runs: Counter[str] = Counter()

    async def handler(session: AsyncSession, env: Envelope) -> None:
        runs[env.resource_id] += 1
        await record_effect(session, env)
        if env.payload.get("fail") and failure == "retry":
            raise Retry("parent missing")
        if env.payload.get("fail"):
            raise Reject("domain taken", reason="conflict")

    stack.router.on_resource("organization", handler)
    events = [org_event(stack.cfg, f"r{i}", fail=(i == 2)) for i in range(5)]
    batch = await publish_and_fetch(stack, events)
    with statements(stack) as seen:
        outcomes = await stack.processor.process_batch(batch)

    failed = Outcome.RETRIED if failure == "retry" else Outcome.DEAD_LETTERED
    assert outcomes == [Outcome.ACKED, Outcome.ACKED, failed, Outcome.ACKED, Outcome.ACKED]
    # r0, r1 ran in the rolled-back attempt and again in the fallback; the failing
    # handler ran once (its failure was kept); r3, r4 only in the fallback
    assert runs == {"r0": 2, "r1": 2, "r2": 1, "r3": 1, "r4": 1}
    assert count(seen, "SAVEPOINT") == 4  # fallback: one per delivery it ran
    assert (stack.processor.optimistic_batches, stack.processor.fallback_batches) == (0, 1)
    applied = await effects_by_event(stack)
    assert applied == {events[i].event_id: 1 for i in (0, 1, 3, 4)}  # exactly once each
    assert [d.kinds for i, d in enumerate(batch) if i != 2] == [["ack"]] * 4
    status, attempts, last_error = await stack.row(
        "SELECT status, attempts, last_error FROM bridge_inbox WHERE event_id = :e",
        e=events[2].event_id,
    )
    if failure == "retry":
        assert batch[2].calls == [("nak", 0.3)]  # backoff[0], as on the savepoint path
        assert (status, attempts) == ("failed", 1) and "parent missing" in last_error
    else:
        assert batch[2].kinds == ["term"]
        [letter] = await stack.dead_letters.list()
        assert (letter.reason, letter.original_seq) == ("conflict", batch[2].stream_seq)
        assert status == "dead_lettered" and "domain taken" in last_error
    counts = await stack.processor.counts()
    assert (counts.processed, counts.total) == (4, 5)


async def test_commit_failing_only_in_the_optimistic_attempt_is_applied_by_the_fallback(
    stack: Stack,
) -> None:
    """A deferred constraint breaks the one-transaction commit; re-run with
    savepoints (where the handlers no longer collide) the batch commits once."""
    async with stack.engine.begin() as conn:
        await conn.execute(text(ONCE_DDL))
    runs: Counter[str] = Counter()

    async def handler(session: AsyncSession, env: Envelope) -> None:
        runs[env.resource_id] += 1
        await record_effect(session, env)
        if runs[env.resource_id] == 1:  # first run of each event: both insert 'same'
            await session.execute(text("INSERT INTO once VALUES ('same')"))

    stack.router.on("organization.created", handler)
    events = [org_event(stack.cfg, "1"), org_event(stack.cfg, "2")]
    batch = await publish_and_fetch(stack, events)
    assert await stack.processor.process_batch(batch) == [Outcome.ACKED, Outcome.ACKED]
    assert runs == {"1": 2, "2": 2}
    assert stack.processor.fallback_batches == 1
    assert await effects_by_event(stack) == {env.event_id: 1 for env in events}
    assert await stack.scalar("SELECT count(*) FROM once") == 0  # attempt rolled back
    assert [d.kinds for d in batch] == [["ack"], ["ack"]]
    assert (await stack.processor.counts()).processed == 2


async def test_commit_failing_on_both_paths_naks_every_delivery(stack: Stack) -> None:
    async with stack.engine.begin() as conn:
        await conn.execute(text(ONCE_DDL))
    runs: Counter[str] = Counter()

    async def handler(session: AsyncSession, env: Envelope) -> None:
        runs[env.resource_id] += 1
        await record_effect(session, env)
        await session.execute(text("INSERT INTO once VALUES ('same')"))

    stack.router.on("organization.created", handler)
    batch = await publish_and_fetch(stack, [org_event(stack.cfg, "1"), org_event(stack.cfg, "2")])
    assert await stack.processor.process_batch(batch) == [Outcome.RETRIED, Outcome.RETRIED]
    assert [d.calls for d in batch] == [[("nak", 0.3)], [("nak", 0.3)]]
    assert runs == {"1": 2, "2": 2}  # the attempt, then the fallback: both rolled back
    assert await stack.effects() == 0
    assert (await stack.processor.counts()).total == 0


async def test_a_handler_leaving_the_transaction_aborted_fails_the_batch_as_before(
    stack: Stack,
) -> None:
    """A handler that swallows a database error without a savepoint of its own
    leaves the transaction aborted.  Optimistic: the NEXT handler's statement fails,
    the attempt is rolled back.  The fallback ends like the savepoint path always
    did: SQLAlchemy does not roll back to a savepoint whose RELEASE failed, so the
    batch transaction fails and every delivery is NAKed (nothing applied or acked)."""
    runs: Counter[str] = Counter()

    async def handler(session: AsyncSession, env: Envelope) -> None:
        runs[env.resource_id] += 1
        if env.payload.get("swallow"):
            with contextlib.suppress(DBAPIError):  # wrong: the transaction stays aborted
                await session.execute(text("SELECT 1 / 0"))
            return
        await record_effect(session, env)

    stack.router.on_resource("organization", handler)
    savepoints = InboxProcessor(
        stack.cfg, stack.sessions, stack.router, stack.dead_letters, optimistic=False
    )
    # optimistic: "s" ran in the attempt and in the fallback; "ok" failed in the
    # attempt and kept that failure.  Savepoint path: each ran once.
    expected = ((stack.processor, {"s": 2, "ok": 1}), (savepoints, {"s": 1, "ok": 1}))
    for processor, expected_runs in expected:
        runs.clear()
        events = [org_event(stack.cfg, "s", swallow=True), org_event(stack.cfg, "ok")]
        batch = await publish_and_fetch(stack, events)
        assert await processor.process_batch(batch) == [Outcome.RETRIED, Outcome.RETRIED]
        assert [d.kinds for d in batch] == [["nak"], ["nak"]]
        assert runs == expected_runs
        assert await stack.effects() == 0
    assert stack.processor.fallback_batches == 1
    assert (await stack.processor.counts()).total == 0


async def test_upper_case_event_id_is_applied_and_then_recognised_as_a_duplicate(
    stack: Stack,
) -> None:
    """PostgreSQL returns a uuid in lower case; the claim must still match the id
    as the producer spelled it, or the event would be acked as a duplicate unrun."""
    stack.router.on("organization.created", record_effect)
    lower = org_event(stack.cfg, "1")
    upper = dataclasses.replace(lower, event_id=lower.event_id.upper())
    [first] = await publish_and_fetch(stack, [upper])
    assert await stack.processor.process_batch([first]) == [Outcome.ACKED]
    assert await stack.effects() == 1
    [again] = await publish_and_fetch(stack, [lower])  # the same event, other spelling
    assert await stack.processor.process_batch([again]) == [Outcome.DUPLICATE]
    assert await stack.effects() == 1
