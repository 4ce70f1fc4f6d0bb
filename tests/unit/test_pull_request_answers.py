"""BatchPuller's handling of what the server answers (no server: a scripted client)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from nats.aio.msg import Msg

from bridge.transport.pull_requests import BatchPuller, PullError

SUBJECT = "$JS.API.CONSUMER.MSG.NEXT.s.d"


class ScriptedClient:
    """Answers each pull request with what ``answer(n, reply)`` returns."""

    def __init__(self, answer: Callable[[int, str], list[Msg]]) -> None:
        self.answer = answer
        self.requests: list[dict[str, Any]] = []
        self.cb: Callable[[Msg], Any] | None = None

    def new_inbox(self) -> str:
        return "_INBOX.t"

    async def subscribe(self, subject: str, cb: Callable[[Msg], Any]) -> Any:
        assert subject == "_INBOX.t.*"
        self.cb = cb
        return self

    async def unsubscribe(self) -> None:
        self.cb = None

    async def publish(self, subject: str, payload: bytes, reply: str) -> None:
        assert subject == SUBJECT
        self.requests.append(json.loads(payload))
        answers = self.answer(len(self.requests), reply)

        async def deliver() -> None:
            for msg in answers:
                assert self.cb is not None
                await self.cb(msg)

        asyncio.get_running_loop().call_soon(asyncio.ensure_future, deliver())


def delivery(seq: int) -> Msg:
    reply = f"$JS.ACK.s.d.1.{seq}.{seq}.0.0"
    return Msg(_client=None, subject="sync.x", reply=reply, data=b"{}")  # type: ignore[arg-type]


def status(reply: str, code: str, description: str = "") -> Msg:
    headers = {"Status": code, "Description": description}
    return Msg(_client=None, subject=reply, reply="", data=b"", headers=headers)  # type: ignore[arg-type]


async def started(client: ScriptedClient) -> BatchPuller:
    puller = BatchPuller(client, SUBJECT)  # type: ignore[arg-type]
    await puller.start()
    return puller


def seqs(msgs: list[Msg]) -> list[int]:
    return [int(m.reply.split(".")[-4]) for m in msgs]


async def test_a_short_batch_ends_with_its_own_status_and_stale_ones_are_ignored() -> None:
    def answer(n: int, reply: str) -> list[Msg]:
        # an earlier request's late 408 and a heartbeat come first: neither ends this one
        return [
            status("_INBOX.t.0", "408", "Request Timeout"),
            status(reply, "100", "Idle Heartbeat"),
            delivery(1),
            delivery(2),
            status(reply, "404", "No Messages"),
        ]

    puller = await started(ScriptedClient(answer))
    assert seqs(await puller.fetch(10, timeout=5.0)) == [1, 2]


async def test_a_full_batch_needs_no_status_and_what_is_left_comes_first_next_time() -> None:
    client = ScriptedClient(lambda n, reply: [delivery(i) for i in range(1, 6)])
    puller = await started(client)
    assert seqs(await puller.fetch(3, timeout=5.0)) == [1, 2, 3]
    await asyncio.sleep(0)
    assert seqs(await puller.fetch(3, timeout=5.0)) == [4, 5]  # held, no new request
    assert len(client.requests) == 1
    assert client.requests[0]["batch"] == 3 and client.requests[0]["no_wait"] is True
    assert 0 < client.requests[0]["expires"] < 5e9  # the server gives up first


async def test_a_refusal_with_nothing_received_is_an_error() -> None:
    puller = await started(
        ScriptedClient(lambda n, reply: [status(reply, "409", "Consumer Deleted")])
    )
    with pytest.raises(PullError, match="409 Consumer Deleted"):
        await puller.fetch(10, timeout=5.0)


async def test_a_refusal_after_deliveries_hands_them_out() -> None:
    def answer(n: int, reply: str) -> list[Msg]:
        return [delivery(1), status(reply, "409", "Leadership Change")]

    puller = await started(ScriptedClient(answer))
    assert seqs(await puller.fetch(10, timeout=5.0)) == [1]


async def test_no_answer_returns_nothing_after_the_timeout() -> None:
    puller = await started(ScriptedClient(lambda n, reply: []))
    assert await puller.fetch(10, timeout=0.05) == []
