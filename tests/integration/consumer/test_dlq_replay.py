"""Replaying dead letters: only to this app's own consume subject, idempotent, and a
batch that goes on past the letters it cannot replay; dead letters outlive the stream.

Real nats-server and PostgreSQL.  The only fakes are fault injection: a
:class:`DeadLetters` that "crashes" between the replay's PubAck and removing the letter.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from consumer_support import (
    Stack,
    build_stack,
    close_stack,
    make_config,
    org_event,
    record_effect,
    wait_until,
)
from nats.aio.msg import Msg
from sqlalchemy.ext.asyncio import AsyncSession

from bridge.cli import EXIT_FAILED, main_async
from bridge.config import BridgeConfig
from bridge.envelope import Envelope
from bridge.errors import BridgeError, DeadLetterNotFoundError, Reject
from bridge.routing.dlq import DeadLetters
from bridge.routing.letter import DeadLetter
from bridge.testing import NatsServer
from bridge.transport.delivery import StoredMessage
from bridge.transport.publisher import OutgoingMessage, Publisher


class Applied:
    """A handler that rejects until ``fixed`` and then records what it applied."""

    def __init__(self, stack: Stack, *, reject: set[str] | None = None) -> None:
        self.fixed = False
        self.reject = reject  # resource ids to reject (None: all)
        self.envelopes: list[Envelope] = []
        stack.router.on_resource("organization", self)

    async def __call__(self, session: AsyncSession, env: Envelope) -> None:
        if not self.fixed and (self.reject is None or env.resource_id in self.reject):
            raise Reject("not yet", reason="rejected")
        await record_effect(session, env)
        self.envelopes.append(env)


class CrashBeforeRemoving(DeadLetters):
    """Fault injection: the process dies after the replay's PubAck, before the letter
    is removed from the DLQ (``crash=False``: the removal is simply lost)."""

    def __init__(self, stack: Stack, *, crash: bool = True) -> None:
        super().__init__(
            stack.cfg,
            stack.connection.js,
            Publisher(stack.connection.js, stream=stack.cfg.stream_name),
        )
        self.crash = crash

    async def _mark_handled(self, letter: DeadLetter) -> bool:
        if self.crash:
            raise RuntimeError("killed between the replay's PubAck and removing the letter")
        return False


async def forge(stack: Stack, original_subject: str, body: bytes, **extra: str) -> int:
    """A letter published straight to the DLQ subject by a client, as any app user can."""
    headers = {
        "x-dlq-reason": "rejected",
        "x-dlq-original-subject": original_subject,
        "x-dlq-stream-seq": "1",
        "x-dlq-app": stack.cfg.app_name,
        **extra,
    }
    message = OutgoingMessage(stack.cfg.subjects.dlq, body, headers)
    return (await stack.peer.publish_raw(message)).seq


async def drained(stack: Stack) -> None:
    """Wait until the app's durable has nothing pending or unacknowledged."""
    js = stack.connection.js

    async def idle() -> bool:
        info = await js.consumer_info(stack.cfg.stream_name, stack.cfg.subjects.durable)
        return info.num_pending == 0 and info.num_ack_pending == 0

    await wait_until(idle, timeout=15)


async def subject_count(stack: Stack, subject: str) -> int:
    info = await stack.connection.js.stream_info(stack.cfg.stream_name, subjects_filter=subject)
    return int((info.state.subjects or {}).get(subject, 0))


async def one_letter(stack: Stack) -> DeadLetter:
    async def stored() -> bool:
        return len(await stack.dead_letters.list()) == 1

    await wait_until(stored, timeout=15)
    [letter] = await stack.dead_letters.list()
    return letter


def cli_env(cfg: BridgeConfig) -> dict[str, str]:
    return {
        "APP_NAME": cfg.app_name,
        "DESTINATION_APP": cfg.destination_app,
        "STREAM_NAME": cfg.stream_name,
        "NATS_URL": cfg.nats_urls[0],
    }


async def cli(cfg: BridgeConfig, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = await main_async(list(argv), env=cli_env(cfg), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
async def short_window(
    nats_server: NatsServer, unique: str, database_url: str
) -> AsyncIterator[Stack]:
    """A stack whose stream forgets message ids after half a second."""
    stack = await build_stack(
        make_config(nats_server.url, unique, duplicate_window=0.5), database_url
    )
    yield stack
    await close_stack(stack)


# -- confused deputy ---------------------------------------------------------------------
async def test_a_forged_letter_is_refused_and_nothing_is_published(stack: Stack) -> None:
    cfg = stack.cfg
    kept = (await stack.publish(org_event(cfg, "kept"))).seq  # what a purge would destroy
    seen: list[Msg] = []

    async def spy(msg: Msg) -> None:
        seen.append(msg)

    nc = stack.connection.nc
    targets = (  # the peer app's subject, JetStream API calls
        cfg.subjects.publish,
        f"$JS.API.STREAM.PURGE.{cfg.stream_name}",
        f"$JS.API.STREAM.DELETE.{cfg.stream_name}",
    )
    for subject in targets:
        await nc.subscribe(subject, cb=spy)
    body = org_event(cfg, "forged").to_bytes()
    # Header values no dead letter has must not break listing either.
    forged = [
        await forge(stack, subject, body, **{"x-dlq-deliveries": "many", "x-dlq-stream-seq": "x"})
        for subject in targets
    ]

    for seq, subject in zip(forged, targets, strict=True):
        with pytest.raises(BridgeError) as refused:
            await stack.dead_letters.replay(seq)
        message = str(refused.value)
        assert str(seq) in message and subject in message and cfg.subjects.consume in message
    await nc.flush()
    assert seen == []  # nothing was published anywhere
    assert await subject_count(stack, cfg.subjects.publish) == 0
    assert (await stack.connection.js.get_msg(cfg.stream_name, kept)).seq == kept  # not purged
    # refused letters stay where they are, for the operator to inspect or purge
    assert [d.seq for d in await stack.dead_letters.list()] == forged


# -- idempotent replay -------------------------------------------------------------------
async def test_replaying_a_letter_twice_applies_it_once_and_it_leaves_the_list(
    stack: Stack,
) -> None:
    handler = Applied(stack)
    original = org_event(stack.cfg, "r")
    await stack.publish(original)
    await stack.start_consumer()
    letter = await one_letter(stack)
    handler.fixed = True

    first = await stack.dead_letters.replay(letter.seq)
    with pytest.raises(DeadLetterNotFoundError, match=str(letter.seq)):
        await stack.dead_letters.replay(letter.seq)  # handled: it left the DLQ
    await drained(stack)
    assert await stack.effects() == 1
    assert await stack.dead_letters.list() == []
    [applied] = handler.envelopes
    assert applied.event_id == first.event_id != original.event_id
    assert applied.causation_id == original.event_id
    assert first.handled and not first.duplicate


async def test_a_replay_killed_before_the_letter_is_removed_is_a_duplicate_when_run_again(
    stack: Stack,
) -> None:
    handler = Applied(stack)
    await stack.publish(org_event(stack.cfg, "r"))
    await stack.start_consumer()
    letter = await one_letter(stack)
    handler.fixed = True

    with pytest.raises(RuntimeError, match="killed"):
        await CrashBeforeRemoving(stack).replay(letter.seq)
    assert [d.seq for d in await stack.dead_letters.list()] == [letter.seq]  # still there
    again = await stack.dead_letters.replay(letter.seq)
    assert again.duplicate  # the same replay id, inside the duplicate window
    await drained(stack)
    assert await stack.effects() == 1
    assert [e.event_id for e in handler.envelopes] == [again.event_id]
    assert await stack.dead_letters.list() == []


async def test_a_replay_run_again_after_the_duplicate_window_is_absorbed_by_the_inbox(
    short_window: Stack,
) -> None:
    stack = short_window
    handler = Applied(stack)
    await stack.publish(org_event(stack.cfg, "r"))
    await stack.start_consumer()
    letter = await one_letter(stack)
    handler.fixed = True
    keeps_letter = CrashBeforeRemoving(stack, crash=False)
    first = await keeps_letter.replay(letter.seq)
    assert not first.handled
    ids = {first.event_id}

    async def past_the_window() -> bool:
        result = await keeps_letter.replay(letter.seq)
        ids.add(result.event_id)
        return not result.duplicate  # JetStream no longer knew the id: a second copy

    await wait_until(past_the_window, timeout=15, interval=0.1)
    await drained(stack)
    assert ids == {first.event_id}  # one deterministic id per letter
    assert await stack.effects() == 1  # the inbox absorbed the second copy
    inbox = await stack.scalar(
        "SELECT count(*) FROM bridge_inbox WHERE event_id = :e", e=first.event_id
    )
    assert inbox == 1
    await stack.dead_letters.replay(letter.seq)
    assert await stack.dead_letters.list() == []


# -- batch replay --------------------------------------------------------------------------
async def test_replay_all_goes_on_past_letters_it_cannot_replay_and_names_each(
    stack: Stack,
) -> None:
    cfg = stack.cfg
    handler = Applied(stack, reject={"good"})
    await stack.publish_raw(b"{not json")
    await stack.publish(org_event(cfg, "good"))
    await stack.start_consumer()

    async def two() -> bool:
        return len(await stack.dead_letters.list()) == 2

    await wait_until(two, timeout=15)
    by_reason = {d.reason: d.seq for d in await stack.dead_letters.list()}
    forged = await forge(stack, cfg.subjects.publish, org_event(cfg, "forged").to_bytes())
    handler.fixed = True

    code, out, err = await cli(cfg, "--json", "dlq", "replay")
    assert code == EXIT_FAILED, err
    report = json.loads(out)
    assert [r["dlq_seq"] for r in report["replayed"]] == [by_reason["rejected"]]
    refused = {r["dlq_seq"]: r["reason"] for r in report["not_replayed"]}
    assert refused == {by_reason["malformed"]: "malformed", forged: "foreign_subject"}
    assert report["summary"] == {"letters": 3, "replayed": 1, "not_replayed": 2}
    await drained(stack)
    assert await stack.effects() == 1
    remaining = [d.seq for d in await stack.dead_letters.list()]
    assert remaining == [by_reason["malformed"], forged]

    # For people: one line per letter not replayed, what to do, and a summary line.
    code, out, err = await cli(cfg, "dlq", "replay")
    assert code == EXIT_FAILED
    lines = out.splitlines()
    malformed_line = next(line for line in lines if line.startswith(f"{by_reason['malformed']} "))
    assert "malformed" in malformed_line and "dlq show" in out and "dlq purge" in out
    assert any(line.startswith(f"{forged} ") and "foreign_subject" in line for line in lines)
    assert lines[-1] == "replayed 0 of 2 dead letters; 2 not replayed"
    assert [d.seq for d in await stack.dead_letters.list()] == remaining


async def test_replay_by_sequence_reports_an_unknown_sequence_and_goes_on(stack: Stack) -> None:
    handler = Applied(stack)
    await stack.publish(org_event(stack.cfg, "r"))
    await stack.start_consumer()
    letter = await one_letter(stack)
    handler.fixed = True
    code, out, _ = await cli(stack.cfg, "--json", "dlq", "replay", "999999", str(letter.seq))
    report = json.loads(out)
    assert code == EXIT_FAILED
    assert [(r["dlq_seq"], r["reason"]) for r in report["not_replayed"]] == [(999999, "not_found")]
    assert [r["dlq_seq"] for r in report["replayed"]] == [letter.seq]
    code, out, _ = await cli(stack.cfg, "--json", "dlq", "replay")
    assert code == 0 and json.loads(out)["summary"]["letters"] == 0


# -- retention -----------------------------------------------------------------------------
async def test_a_dead_letter_outlives_the_streams_max_age(
    nats_server: NatsServer, unique: str, database_url: str
) -> None:
    cfg = make_config(nats_server.url, unique, stream_max_age=2.0, duplicate_window=1.0)
    stack = await build_stack(cfg, database_url)
    try:
        handler = Applied(stack, reject={"dead"})
        dead = org_event(cfg, "dead")
        await stack.publish(dead)
        await stack.start_consumer()
        letter = await one_letter(stack)
        await stack.publish(org_event(cfg, "later"))  # stored after the dead letter

        async def expired() -> bool:  # every regular message aged out, the later one too
            return await subject_count(stack, cfg.subjects.consume) == 0

        await wait_until(expired, timeout=15)
        [kept] = await stack.dead_letters.list()
        assert kept.seq == letter.seq and kept.envelope().event_id == dead.event_id
        handler.fixed = True
        await stack.dead_letters.replay(letter.seq)  # still replayable after its original expired

        async def applied() -> bool:
            return [e.resource_id for e in handler.envelopes] == ["later", "dead"]

        await wait_until(applied, timeout=15)
    finally:
        await close_stack(stack)


async def test_a_stream_without_message_ttl_still_stores_the_dead_letter(
    nats_server: NatsServer, unique: str, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A stream provisioned before dead letters were kept (no ``allow_msg_ttl``, e.g. a
    restrictive deployment whose provisioner was not run again) refuses ``Nats-TTL``:
    the letter is stored anyway, with the stream's limits, and the log says what to do."""
    cfg = make_config(nats_server.url, unique)
    stack = await build_stack(cfg.with_(dlq_retention="stream"), database_url)
    try:
        info = await stack.connection.js.stream_info(cfg.stream_name)
        assert not info.config.allow_msg_ttl
        seq = (await stack.publish(org_event(cfg))).seq
        message = await stack.dead_letters.read(cfg.stream_name, seq, deliveries=1)
        keeping = DeadLetters(
            cfg, stack.connection.js, Publisher(stack.connection.js, stream=cfg.stream_name)
        )
        with caplog.at_level(logging.ERROR, logger="bridge.dlq"):
            await keeping.publish(message, reason="rejected", error=ValueError("x"))
        [letter] = await stack.dead_letters.list()
        assert letter.original_seq == seq and "Nats-TTL" not in letter.headers
        [record] = [r for r in caplog.records if "allow_msg_ttl" in r.getMessage()]
        assert "bridge-provision apply" in getattr(record, "hint", "")
    finally:
        await close_stack(stack)


async def test_dead_letters_carry_a_never_ttl_unless_retention_follows_the_stream(
    stack: Stack,
) -> None:
    seq = (await stack.publish(org_event(stack.cfg))).seq
    message: StoredMessage = await stack.dead_letters.read(stack.cfg.stream_name, seq)
    await stack.dead_letters.publish(message, reason="rejected", error=None)
    [letter] = await stack.dead_letters.list()
    assert letter.headers["Nats-TTL"] == "never"
    following = DeadLetters(
        stack.cfg.with_(dlq_retention="stream"),
        stack.connection.js,
        Publisher(stack.connection.js, stream=stack.cfg.stream_name),
    )
    other: dict[str, Any] = {**(message.headers or {}), "Nats-Msg-Id": "another-original"}
    await following.publish(
        StoredMessage(message.data, other, message.subject, message.stream, seq + 1000),
        reason="rejected",
        error=None,
    )
    letters = await stack.dead_letters.list()
    assert len(letters) == 2 and "Nats-TTL" not in letters[1].headers
