"""InboxProcessor against real deliveries (nats-server) and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json

import pytest
from consumer_support import SpyDelivery, Stack, org_event, record_effect
from sqlalchemy import String, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bridge.envelope import Envelope
from bridge.errors import Retry
from bridge.inbox.processor import InboxProcessor
from bridge.outbox.capture import SKIP_PUBLISH_KEY, Outbox, Synced
from bridge.routing.router import Router
from bridge.schema import create_all
from bridge.transport.delivery import Delivery, NatsDelivery, Outcome


async def fetch(stack: Stack, sub: object, n: int, timeout: float = 5.0) -> list[SpyDelivery]:
    got: list[SpyDelivery] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while len(got) < n:
        remaining = deadline - asyncio.get_running_loop().time()
        assert remaining > 0, f"fetched only {len(got)} of {n}"
        msgs = await sub.fetch(n - len(got), timeout=min(remaining, 2.0))  # type: ignore[attr-defined]
        got.extend(SpyDelivery(NatsDelivery(m)) for m in msgs)
    return got


async def test_ack_comes_after_commit_and_handler_session_suppresses_publishing(
    stack: Stack,
) -> None:
    seen_flags: list[object] = []

    async def handler(session: AsyncSession, env: Envelope) -> None:
        seen_flags.append(session.info.get(SKIP_PUBLISH_KEY))
        await record_effect(session, env)

    stack.router.on("organization.created", handler)
    sub = await stack.pull_sub()
    await stack.publish(org_event(stack.cfg, "1"))
    [delivery] = await fetch(stack, sub, 1)
    visible_at_ack: list[int] = []

    async def check_committed() -> None:
        visible_at_ack.append(await stack.effects())  # a separate connection

    delivery.on_ack = check_committed
    assert await stack.processor.process_batch([delivery]) == [Outcome.ACKED]
    assert visible_at_ack == [1]
    assert delivery.kinds == ["ack"]
    assert seen_flags == [True]
    counts = await stack.processor.counts()
    assert (counts.total, counts.processed) == (1, 1)


@pytest.mark.parametrize("optimistic", [False, True], ids=["savepoints", "optimistic"])
async def test_failure_rolls_back_only_its_savepoint_and_holds_later_same_resource(
    stack: Stack, optimistic: bool
) -> None:
    """Same outcome on both paths; the optimistic one rolls back at y:1 and re-runs
    the batch with savepoints, running x:1 again but never y:1 (its failure is kept)."""
    calls: list[str] = []

    async def handler(session: AsyncSession, env: Envelope) -> None:
        calls.append(f"{env.resource_id}:{env.payload['n']}")
        await record_effect(session, env)
        if env.payload.get("fail"):
            raise Retry("parent missing")

    stack.router.on_resource("organization", handler)
    sub = await stack.pull_sub()
    events = [
        org_event(stack.cfg, "x", n=1),
        org_event(stack.cfg, "y", n=1, fail=True),
        org_event(stack.cfg, "x", n=2),
        org_event(stack.cfg, "y", n=2),
        org_event(stack.cfg, "z", n=1),
    ]
    for env in events:
        await stack.publish(env)
    batch = await fetch(stack, sub, len(events))
    processor = InboxProcessor(
        stack.cfg, stack.sessions, stack.router, stack.dead_letters, optimistic=optimistic
    )
    outcomes = await processor.process_batch(batch)

    assert outcomes == [
        Outcome.ACKED,
        Outcome.RETRIED,
        Outcome.ACKED,
        Outcome.RETRIED,
        Outcome.ACKED,
    ]
    if optimistic:  # attempt stopped at y:1; fallback re-ran x:1, kept y:1's failure
        assert calls == ["x:1", "y:1", "x:1", "x:2", "z:1"]
        assert (processor.optimistic_batches, processor.fallback_batches) == (0, 1)
    else:
        assert calls == ["x:1", "y:1", "x:2", "z:1"]
    # y:2 was held back, never run; y:1's insert was rolled back, the others committed once
    assert await stack.effects() == 3
    assert batch[1].calls == [("nak", 0.3)]  # backoff[0] for the first delivery
    assert batch[3].calls == [("nak", 0.3)]  # same delay: comes back after y:1
    status, attempts, last_error = await stack.row(
        "SELECT status, attempts, last_error FROM bridge_inbox WHERE event_id = :e",
        e=events[1].event_id,
    )
    assert (status, attempts) == ("failed", 1) and "parent missing" in last_error
    held_attempts, held_error = await stack.row(
        "SELECT attempts, last_error FROM bridge_inbox WHERE event_id = :e", e=events[3].event_id
    )
    assert held_attempts == 0 and "held back" in held_error  # recorded, never run
    counts = await stack.processor.counts()
    assert (counts.processed, counts.failed, counts.total) == (3, 2, 5)


async def test_commit_failure_naks_the_whole_batch(stack: Stack) -> None:
    async with stack.engine.begin() as conn:
        await conn.execute(
            text(
                "CREATE TABLE once (k text, CONSTRAINT once_k UNIQUE (k) "
                "DEFERRABLE INITIALLY DEFERRED)"
            )
        )

    async def handler(session: AsyncSession, env: Envelope) -> None:
        await record_effect(session, env)
        # deferred: both inserts succeed, the COMMIT fails
        await session.execute(text("INSERT INTO once VALUES ('same')"))

    stack.router.on("organization.created", handler)
    sub = await stack.pull_sub()
    await stack.publish(org_event(stack.cfg, "1"))
    await stack.publish(org_event(stack.cfg, "2"))
    batch = await fetch(stack, sub, 2)
    assert await stack.processor.process_batch(batch) == [Outcome.RETRIED, Outcome.RETRIED]
    assert [d.kinds for d in batch] == [["nak"], ["nak"]]
    assert await stack.effects() == 0
    assert (await stack.processor.counts()).total == 0


async def test_same_event_three_times_runs_the_handler_once(stack: Stack) -> None:
    """Delivery 1 is processed but its ack is lost (redelivered after ack_wait);
    the same body is also republished without Nats-Msg-Id, so the server stores
    it again under a new stream sequence.  Idempotency key: the body's event_id."""
    stack.router.on("organization.created", record_effect)
    cfg = stack.cfg
    ack_wait = 1.0
    await stack.connection.js.add_consumer(
        cfg.stream_name,
        durable_name=f"{cfg.subjects.durable}-short",
        filter_subject=cfg.subjects.consume,
        ack_policy="explicit",
        ack_wait=ack_wait,
    )
    sub = await stack.connection.js.pull_subscribe_bind(
        durable=f"{cfg.subjects.durable}-short", stream=cfg.stream_name
    )
    env = org_event(cfg, "1")
    first_seq = (await stack.publish(env)).seq
    [first] = await fetch(stack, sub, 1)
    first.drop_ack = True
    assert await stack.processor.process_batch([first]) == [Outcome.ACKED]

    second_seq = await stack.publish_raw(env.to_bytes(), headers=None)
    assert second_seq != first_seq
    batch = await fetch(stack, sub, 2, timeout=ack_wait + 5)
    assert sorted((d.stream_seq, d.num_delivered) for d in batch) == [
        (first_seq, 2),
        (second_seq, 1),
    ]
    assert await stack.processor.process_batch(batch) == [Outcome.DUPLICATE] * 2
    assert all(d.kinds == ["ack"] for d in batch)
    assert await stack.effects() == 1
    counts = await stack.processor.counts()
    assert (counts.total, counts.processed) == (1, 1)


async def test_concurrent_claim_of_one_event_runs_once(stack: Stack) -> None:
    """Two replicas apply the same event at once: the second claim waits on the
    first transaction and then sees the event processed (a duplicate)."""
    gate, entered = asyncio.Event(), asyncio.Event()
    runs = 0

    async def slow(session: AsyncSession, env: Envelope) -> None:
        nonlocal runs
        runs += 1
        entered.set()
        await record_effect(session, env)
        await gate.wait()

    stack.router.on("organization.created", slow)
    env = org_event(stack.cfg, "1")
    await stack.publish(env)
    await stack.publish_raw(env.to_bytes())  # same event, second stream sequence
    sub = await stack.pull_sub()
    one, two = await fetch(stack, sub, 2)
    first = asyncio.create_task(stack.processor.process_batch([one]))
    await asyncio.wait_for(entered.wait(), 5)  # first holds the inbox row now
    second = asyncio.create_task(stack.processor.process_batch([two]))
    await asyncio.sleep(0.2)  # let the second claim block on the first's row lock
    assert not second.done()
    gate.set()
    assert await first == [Outcome.ACKED]
    assert await second == [Outcome.DUPLICATE]
    assert runs == 1
    assert await stack.effects() == 1


async def test_use_inbox_false_runs_every_delivery(stack: Stack) -> None:
    cfg = stack.cfg.with_(use_inbox=False)
    router = Router()
    router.on("organization.created", record_effect)
    processor = stack.processor_for(cfg, router)
    env = org_event(cfg, "1")
    await stack.publish(env)
    await stack.publish_raw(env.to_bytes())
    sub = await stack.pull_sub()
    batch: list[Delivery] = list(await fetch(stack, sub, 2))
    assert await processor.process_batch(batch) == [Outcome.ACKED, Outcome.ACKED]
    assert await stack.effects() == 2
    assert (await processor.counts()).total == 0


async def test_unknown_event_policy_ack_records_and_acks(stack: Stack) -> None:
    router = Router(unknown_event_policy="ack")
    processor = stack.processor_for(router=router)
    sub = await stack.pull_sub()
    await stack.publish(org_event(stack.cfg, "1", event_type="widget.created"))
    batch = await fetch(stack, sub, 1)
    assert await processor.process_batch(batch) == [Outcome.ACKED]
    assert batch[0].kinds == ["ack"]
    assert json.loads(batch[0].data)["event_type"] == "widget.created"
    assert (await processor.counts()).processed == 1


class _Base(DeclarativeBase):
    pass


class _Org(Synced, _Base):
    __tablename__ = "synced_orgs"
    __bridge_resource__ = "organization"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))


async def test_handler_writes_to_synced_models_are_not_captured(stack: Stack) -> None:
    """With the real outbox session class: a handler's change never echoes back,
    while the same change made by the application is captured (the control)."""
    outbox = Outbox(stack.cfg)
    sessions = async_sessionmaker(
        stack.engine, sync_session_class=outbox.session_class, expire_on_commit=False
    )
    await create_all(stack.engine, models=[_Org])  # its table and capture trigger

    async def apply_org(session: AsyncSession, env: Envelope) -> None:
        session.add(_Org(id=env.resource_id, name=str(env.payload["name"])))

    router = Router()
    router.on("organization.created", apply_org)
    processor = InboxProcessor(stack.cfg, sessions, router, stack.dead_letters)
    await stack.publish(org_event(stack.cfg, "from-peer", name="Peer Org"))
    sub = await stack.pull_sub()
    batch = await fetch(stack, sub, 1)
    assert await processor.process_batch(batch) == [Outcome.ACKED]
    assert await stack.scalar("SELECT name FROM synced_orgs") == "Peer Org"
    assert await stack.scalar("SELECT count(*) FROM bridge_outbox") == 0

    async with sessions() as session, session.begin():
        session.add(_Org(id="local", name="Local Org"))
    assert await stack.scalar("SELECT count(*) FROM bridge_outbox") == 1


@pytest.mark.parametrize("use_inbox", [True, False])
async def test_handler_writes_through_a_plain_session_are_not_captured(
    stack: Stack, use_inbox: bool
) -> None:
    """An application's own ``async_sessionmaker`` (no outbox session class): the
    inbox turns capture off in the batch's transaction — with the inbox, inside the
    claim statement; without it, with a statement of its own — so a peer's change
    applied through it never echoes back, over two batches (the setting is the
    transaction's, not the connection's)."""
    await create_all(stack.engine, models=[_Org])  # its table and capture trigger
    await Outbox(stack.cfg).record_producer(stack.engine)  # plain sessions' writes: ours
    sessions = async_sessionmaker(stack.engine, expire_on_commit=False)

    async def apply_org(session: AsyncSession, env: Envelope) -> None:
        session.add(_Org(id=env.resource_id, name=str(env.payload["name"])))

    router = Router()
    router.on("organization.created", apply_org)
    cfg = stack.cfg.with_(use_inbox=use_inbox)
    processor = InboxProcessor(cfg, sessions, router, stack.dead_letters)
    sub = await stack.pull_sub()
    for name in ("first", "second"):
        await stack.publish(org_event(stack.cfg, name, name=f"Peer {name}"))
        batch = await fetch(stack, sub, 1)
        assert await processor.process_batch(batch) == [Outcome.ACKED]
    assert await stack.scalar("SELECT count(*) FROM synced_orgs") == 2
    assert await stack.scalar("SELECT count(*) FROM bridge_outbox") == 0

    async with sessions() as session, session.begin():  # the control: captured
        session.add(_Org(id="local", name="Local Org"))
    assert await stack.scalar("SELECT count(*) FROM bridge_outbox") == 1
