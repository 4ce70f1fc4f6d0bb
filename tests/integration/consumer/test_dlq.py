"""Dead letters end to end: reasons, headers, list/show/replay/purge, failure paths."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from consumer_support import (
    SpyDelivery,
    Stack,
    build_stack,
    close_stack,
    make_config,
    org_event,
    record_effect,
    wait_until,
)
from nats.errors import TimeoutError as NatsTimeoutError
from sqlalchemy.ext.asyncio import AsyncSession

from bridge.config import BridgeConfig
from bridge.consumer.max_deliveries import MaxDeliveriesWatcher
from bridge.envelope import Envelope
from bridge.errors import DeadLetterNotFoundError, Reject
from bridge.routing.dlq import DeadLetters
from bridge.routing.letter import dead_letter_msg_id
from bridge.testing import NatsServer
from bridge.transport.delivery import NatsDelivery, Outcome, StoredMessage
from bridge.transport.jsapi import JetStreamApi
from bridge.transport.publisher import Publisher


async def test_each_failure_kind_lands_in_the_dlq_and_replay_processes_it(stack: Stack) -> None:
    fixed = False

    async def handler(session: AsyncSession, env: Envelope) -> None:
        mode = env.payload.get("mode")
        if mode == "reject" and not fixed:
            raise Reject("domain taken by another organization", reason="conflict")
        if mode == "broken" and not fixed:
            raise RuntimeError("bug\nwith a newline")
        await record_effect(session, env)

    stack.router.on_resource("organization", handler)
    cfg = stack.cfg
    rejected = org_event(cfg, "r", mode="reject")
    broken = org_event(cfg, "b", mode="broken")
    unknown = org_event(cfg, "w", event_type="widget.created")
    seqs = {
        "malformed": await stack.publish_raw(b"{not json", {"traceparent": "00-abc-def-01"}),
        "unknown_event_type": (await stack.publish(unknown)).seq,
        "conflict": (await stack.publish(rejected)).seq,
        "max_deliver_exceeded": (await stack.publish(broken)).seq,
    }
    await stack.start_consumer()

    async def four_dead() -> bool:
        return len(await stack.dead_letters.list()) >= 4

    await wait_until(four_dead, timeout=15)
    letters = {dl.reason: dl for dl in await stack.dead_letters.list()}
    assert set(letters) == set(seqs)
    for reason, dl in letters.items():
        assert dl.original_seq == seqs[reason]
        assert dl.original_subject == cfg.subjects.consume
        assert dl.headers["Nats-Msg-Id"] == dead_letter_msg_id(cfg.stream_name, seqs[reason])
        assert dl.headers["x-dlq-app"] == cfg.app_name and dl.at
    assert letters["malformed"].data == b"{not json"
    assert letters["malformed"].headers["traceparent"] == "00-abc-def-01"  # original headers kept
    assert letters["malformed"].error_class == "EnvelopeError"
    assert letters["conflict"].headers["x-dlq-original-msg-id"] == rejected.event_id
    assert letters["conflict"].error_message == "domain taken by another organization"
    assert letters["conflict"].deliveries == 1
    assert letters["max_deliver_exceeded"].deliveries == cfg.max_deliver
    assert letters["max_deliver_exceeded"].error_message == "bug with a newline"
    assert letters["max_deliver_exceeded"].envelope().event_id == broken.event_id
    shown = await stack.dead_letters.show(letters["conflict"].seq)
    assert shown == letters["conflict"]

    counts = await stack.processor.counts()
    # unknown, conflict, max_deliver are dead_lettered; malformed has no event id
    assert (counts.dead_lettered, counts.processed) == (3, 0)
    assert await stack.effects() == 0

    fixed = True
    replayed = await stack.dead_letters.replay(letters["max_deliver_exceeded"].seq)
    await stack.dead_letters.replay(letters["conflict"].seq)

    async def two_effects() -> bool:
        return await stack.effects() == 2

    await wait_until(two_effects, timeout=10)
    causes = await stack.scalar(
        "SELECT string_agg(resource_id, ',' ORDER BY resource_id) FROM effects"
    )
    assert causes == "b,r"
    counts = await stack.processor.counts()
    assert (counts.processed, counts.dead_lettered) == (2, 3)  # originals stay dead-lettered
    assert replayed.stream_seq > max(seqs.values()) and replayed.handled
    # replayed letters are handled: they leave the DLQ; the others stay until purged
    remaining = {d.reason for d in await stack.dead_letters.list()}
    assert remaining == {"malformed", "unknown_event_type"}
    assert await stack.dead_letters.purge(letters["malformed"].seq) == 1
    with pytest.raises(DeadLetterNotFoundError):
        await stack.dead_letters.show(letters["malformed"].seq)
    assert await stack.dead_letters.count() == 1
    assert await stack.dead_letters.purge() == 1
    assert await stack.dead_letters.list() == []


async def test_show_refuses_a_message_that_is_not_a_dead_letter(stack: Stack) -> None:
    seq = (await stack.publish(org_event(stack.cfg))).seq
    with pytest.raises(DeadLetterNotFoundError, match="not the DLQ subject"):
        await stack.dead_letters.show(seq)
    with pytest.raises(DeadLetterNotFoundError):
        await stack.dead_letters.purge(seq)
    with pytest.raises(DeadLetterNotFoundError):
        await stack.dead_letters.show(seq + 1000)


async def test_publishing_the_same_dead_letter_twice_stores_it_once(stack: Stack) -> None:
    env = org_event(stack.cfg)
    seq = (await stack.publish(env)).seq
    message = await stack.dead_letters.read(stack.cfg.stream_name, seq, deliveries=3)
    assert message.headers is not None and message.headers["Nats-Msg-Id"] == env.event_id
    for _ in range(2):
        await stack.dead_letters.publish(message, reason="rejected", error=ValueError("x"))
    [letter] = await stack.dead_letters.list()
    assert (letter.original_seq, letter.deliveries, letter.error_class) == (seq, 3, "ValueError")


async def test_failed_dead_letter_publish_naks_instead_of_acking(stack: Stack) -> None:
    """The DLQ subject is not in any stream: the publish fails for real."""

    async def reject(session: AsyncSession, env: Envelope) -> None:
        raise Reject("nope")

    stack.router.on("organization.created", reject)
    nowhere = stack.cfg.with_(app_name=f"{stack.cfg.app_name}x")
    publisher = Publisher(stack.connection.js, stream=None, timeout=1.0)
    processor = stack.processor_for()
    processor._dead_letters = DeadLetters(nowhere, stack.connection.js, publisher)
    env = org_event(stack.cfg)
    await stack.publish(env)
    sub = await stack.pull_sub()
    [msg] = await sub.fetch(1, timeout=5)
    delivery = SpyDelivery(NatsDelivery(msg))
    assert await processor.process_batch([delivery]) == [Outcome.RETRIED]
    assert delivery.calls == [("nak", stack.cfg.backoff_for(1))]
    assert await stack.scalar("SELECT status FROM bridge_inbox") == "failed"


async def test_without_dlq_a_permanent_failure_is_left_unacked(stack: Stack) -> None:
    async def reject(session: AsyncSession, env: Envelope) -> None:
        raise Reject("nope")

    stack.router.on("organization.created", reject)
    cfg = stack.cfg.with_(use_dlq=False)
    processor = stack.processor_for(cfg)
    assert processor.dead_letters is None
    await stack.publish(org_event(cfg))
    sub = await stack.pull_sub()
    [msg] = await sub.fetch(1, timeout=5)
    delivery = SpyDelivery(NatsDelivery(msg))
    assert await processor.process_batch([delivery]) == [Outcome.RETRIED]
    assert delivery.calls == [("nak", cfg.backoff[-1])]
    assert await stack.dead_letters.list() == []


async def test_watcher_dead_letters_what_the_server_gave_up_on(
    nats_server: NatsServer, unique: str, database_url: str
) -> None:
    """A consumer still provisioned with a finite server-side max_deliver (by an
    older version: drift) abandons a delivery whose last attempt timed out; the
    MAX_DELIVERIES advisory brings it to the DLQ."""
    cfg = make_config(nats_server.url, unique, ack_wait=0.5, backoff=(0.5,), max_deliver=2)
    stack = await build_stack(cfg, database_url)
    try:
        api = JetStreamApi(stack.connection.nc)
        current = (await api.consumer_info(cfg.stream_name, cfg.subjects.durable))["config"]
        await api.save_consumer(cfg.stream_name, {**current, "max_deliver": 2}, action="update")
        watcher = MaxDeliveriesWatcher(
            cfg, stack.connection.nc, stack.dead_letters, stack.processor
        )
        await watcher.start()
        lost = org_event(cfg, "lost")
        seq = (await stack.publish(lost)).seq
        sub = await stack.pull_sub()
        for attempt in (1, 2):  # fetch and never acknowledge
            [msg] = await sub.fetch(1, timeout=5)
            assert msg.metadata.num_delivered == attempt

        async def captured() -> bool:
            # the server checks max_deliver when it tries to redeliver, i.e. while
            # a pull request is waiting: keep one open like a running consumer
            with contextlib.suppress(TimeoutError, NatsTimeoutError):
                assert not await sub.fetch(1, timeout=0.5)
            return watcher.captured == 1

        await wait_until(captured, timeout=10)
        await watcher.stop()
        [letter] = await stack.dead_letters.list()
        assert (letter.reason, letter.original_seq, letter.deliveries) == (
            "max_deliver_exceeded",
            seq,
            2,
        )
        assert await stack.scalar("SELECT status FROM bridge_inbox") == "dead_lettered"
    finally:
        await close_stack(stack)


async def test_watcher_skips_an_event_that_was_already_processed(stack: Stack) -> None:
    stack.router.on("organization.created", record_effect)
    env = org_event(stack.cfg)
    seq = (await stack.publish(env)).seq
    sub = await stack.pull_sub()
    [msg] = await sub.fetch(1, timeout=5)
    assert await stack.processor.process_batch([NatsDelivery(msg)]) == [Outcome.ACKED]
    watcher = MaxDeliveriesWatcher(
        stack.cfg, stack.connection.nc, stack.dead_letters, stack.processor
    )
    advisory: dict[str, Any] = {"stream": stack.cfg.stream_name, "stream_seq": seq, "deliveries": 3}
    assert await watcher.handle(advisory) is False
    assert await stack.dead_letters.list() == []
    # a malformed message is never "settled": it is dead-lettered
    bad_seq = await stack.publish_raw(b"garbage")
    assert await watcher.handle({**advisory, "stream_seq": bad_seq}) is True
    [letter] = await stack.dead_letters.list()
    assert letter.data == b"garbage"


def test_stored_message_is_a_received_message(cfg: BridgeConfig) -> None:
    msg = StoredMessage(b"x", None, cfg.subjects.consume, cfg.stream_name, 7)
    assert (msg.stream_seq, msg.num_delivered) == (7, 0)
