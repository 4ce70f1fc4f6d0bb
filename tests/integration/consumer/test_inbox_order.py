"""Per-record order across batches: a later event of a record is not applied while an
earlier one waits for its redelivery after a transient failure.

Real nats-server and PostgreSQL.  ``v1`` of record ``r1`` fails once (``Retry``); ``v2``
is published only once ``v1``'s ``failed`` inbox record is committed, so it arrives in
a later fetch (or at another replica) while ``v1`` waits for its redelivery.  The
handlers record the order they saw; the ``effects`` table (``bigserial`` id, rolled-back
writes leave no row) records the order that was committed.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from consumer_support import Stack, org_event, record_effect, wait_until
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from bridge.config import BridgeConfig
from bridge.envelope import Envelope
from bridge.errors import Reject, Retry
from bridge.routing.router import Router


class OrderRecorder:
    """Records the versions it applies; ``fail`` decides, per call, whether v1 fails."""

    def __init__(self, failures: int = 1) -> None:
        self.seen: list[int] = []
        self.calls: list[int] = []
        self.failures = failures  # how many times v1 fails with Retry
        self.reject = False  # v1 fails with Reject (dead letter) instead

    async def apply(self, session: AsyncSession, env: Envelope) -> None:
        version = int(env.payload["version"])
        self.calls.append(version)
        if version == 1 and self.reject:
            raise Reject("given up", reason="conflict")
        if version == 1 and self.failures:
            self.failures -= 1
            raise Retry("not yet")
        self.seen.append(version)
        await record_effect(session, env)

    async def per_event(self, session: AsyncSession, env: Envelope) -> None:
        await self.apply(session, env)

    async def batch(self, session: AsyncSession, envelopes: Sequence[Envelope]) -> None:
        for env in envelopes:
            await self.apply(session, env)

    def register(self, router: Router, kind: str) -> None:
        if kind == "batch":
            router.on_batch("organization", self.batch)
        else:
            router.on_resource("organization", self.per_event)


def slow_retries(stack: Stack, **overrides: object) -> BridgeConfig:
    """v1's redelivery comes 1 s after its failure: time for v2 to arrive before it."""
    values: dict[str, object] = {"backoff": (1.0, 1.0), "max_deliver": 5}
    values.update(overrides)
    return stack.cfg.with_(**values)


async def committed_versions(stack: Stack) -> list[int]:
    async with stack.engine.connect() as conn:
        rows = await conn.execute(text("SELECT version FROM effects ORDER BY id"))
        return [int(v) for (v,) in rows]


async def wait_for_failed_record(stack: Stack, event_id: str) -> None:
    async def failed() -> bool:
        status = await stack.scalar(
            "SELECT status FROM bridge_inbox WHERE event_id = :e", e=event_id
        )
        return status == "failed"

    await wait_until(failed, timeout=5)


@pytest.mark.parametrize("kind", ["per_event", "batch"])
async def test_a_retried_event_applies_before_the_next_one_from_a_later_fetch(
    stack: Stack, kind: str
) -> None:
    cfg = slow_retries(stack)
    await stack.reprovision(cfg)
    recorder = OrderRecorder(failures=1)
    recorder.register(stack.router, kind)
    v1 = org_event(cfg, "r1", version=1)
    await stack.publish(v1)
    await stack.start_consumer(cfg, stack.processor_for(cfg))
    await wait_for_failed_record(stack, v1.event_id)
    await stack.publish(org_event(cfg, "r1", version=2))
    await stack.publish(org_event(cfg, "other", version=7))  # another record is not held

    async def all_applied() -> bool:
        return len(await committed_versions(stack)) == 3

    await wait_until(all_applied, timeout=10)
    assert [v for v in recorder.seen if v != 7] == [1, 2]
    assert [v for v in await committed_versions(stack) if v != 7] == [1, 2]
    assert (await committed_versions(stack))[0] == 7  # applied at once, not behind r1
    # holding v2 back is not a handler failure: its record counts one handler run
    assert (
        await stack.scalar("SELECT max(attempts) FROM bridge_inbox WHERE status = 'processed'") == 2
    )


async def test_order_holds_across_replicas_of_one_durable(stack: Stack) -> None:
    cfg = slow_retries(stack)
    await stack.reprovision(cfg)
    recorder = OrderRecorder(failures=1)
    recorder.register(stack.router, "per_event")
    v1 = org_event(cfg, "r1", version=1)
    await stack.publish(v1)
    # two replicas (each its own processor and connection pool use) on the same durable
    await stack.start_consumer(cfg, stack.processor_for(cfg))
    await stack.start_consumer(cfg, stack.processor_for(cfg))
    await wait_for_failed_record(stack, v1.event_id)
    for version in (2, 3):
        await stack.publish(org_event(cfg, "r1", version=version))

    async def all_applied() -> bool:
        return len(await committed_versions(stack)) == 3

    await wait_until(all_applied, timeout=15)
    assert recorder.seen == [1, 2, 3]
    assert await committed_versions(stack) == [1, 2, 3]


async def test_a_held_event_applies_once_the_earlier_one_is_dead_lettered(stack: Stack) -> None:
    # v1 keeps failing until the test turns it into a Reject; v2 waits meanwhile and is
    # applied (never dead-lettered) as soon as v1 no longer waits for a redelivery.
    cfg = slow_retries(stack, backoff=(0.3,), max_deliver=10)
    await stack.reprovision(cfg)
    recorder = OrderRecorder(failures=1000)
    recorder.register(stack.router, "per_event")
    v1 = org_event(cfg, "r1", version=1)
    await stack.publish(v1)
    await stack.start_consumer(cfg, stack.processor_for(cfg))
    await wait_for_failed_record(stack, v1.event_id)
    v2 = org_event(cfg, "r1", version=2)
    await stack.publish(v2)

    async def v2_held() -> bool:
        error = await stack.scalar(
            "SELECT last_error FROM bridge_inbox WHERE event_id = :e", e=v2.event_id
        )
        return bool(error) and "held back" in error

    await wait_until(v2_held, timeout=5)
    assert recorder.seen == []  # v2 has not run
    recorder.reject = True

    async def v2_applied() -> bool:
        return await committed_versions(stack) == [2]

    await wait_until(v2_applied, timeout=10)
    assert recorder.calls[-1] == 2 and set(recorder.calls[:-1]) == {1}
    letters = await stack.dead_letters.list()
    assert [letter.reason for letter in letters] == ["conflict"]  # v1 only
    row = await stack.row(
        "SELECT status, attempts FROM bridge_inbox WHERE event_id = :e", e=v2.event_id
    )
    assert row == ("processed", 1)  # held deliveries did not count as handler runs


async def test_a_dead_lettered_or_stale_earlier_event_holds_nothing_back(stack: Stack) -> None:
    cfg = slow_retries(stack)
    await stack.reprovision(cfg)
    recorder = OrderRecorder(failures=0)
    recorder.reject = True
    recorder.register(stack.router, "per_event")
    await stack.publish(org_event(cfg, "r1", version=1))  # dead-lettered at once
    # A failed record nobody will redeliver any more (its retry time long past, e.g.
    # the server gave up on it while no watcher ran) must not block its record for ever.
    async with stack.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO bridge_inbox (event_id, subject, event_type, resource_type,"
                " resource_id, stream_seq, status, attempts, retry_at) VALUES"
                " (gen_random_uuid(), 's', 'organization.updated', 'organization', 'r2', 1,"
                " 'failed', 1, now() - interval '1 hour')"
            )
        )
    consumer = await stack.start_consumer(cfg, stack.processor_for(cfg))

    async def dead_lettered() -> bool:
        return len(await stack.dead_letters.list()) == 1

    await wait_until(dead_lettered, timeout=5)
    await stack.publish(org_event(cfg, "r1", version=2))
    await stack.publish(org_event(cfg, "r2", version=3))

    async def applied() -> bool:
        return sorted(await committed_versions(stack)) == [2, 3]

    await wait_until(applied, timeout=3)  # first delivery: nothing held them back
    assert consumer.stats().redeliveries == 0
