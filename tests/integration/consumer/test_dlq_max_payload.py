"""A delivery near the server's ``max_payload`` is dead-lettered, not a connection killer.

nats-py checks only a message's body against ``max_payload``; a dead letter adds about
half a kilobyte of ``x-dlq-*`` headers to the original body, and the server answers a
message whose headers and body exceed ``max_payload`` by closing the connection.  A
crafted body just under the limit therefore made every dead-letter attempt drop the
app's connection — stalling its relay and consumer on each reconnect, for ever, since
the delivery came back.  Now the publisher refuses an oversized message before sending
it (``PayloadTooLargeError``), and a dead letter whose body does not fit is cut to fit
and marked ``x-dlq-truncated`` (the original stays in the stream); replay refuses it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from consumer_support import Stack, build_stack, close_stack, make_config, org_event, wait_until

from bridge.errors import PayloadTooLargeError, ReplayRefusedError
from bridge.routing.letter import H_TRUNCATED
from bridge.routing.router import Router
from bridge.testing import NatsServer
from bridge.transport.publisher import OutgoingMessage

MAX_PAYLOAD = 16 * 1024


@pytest.fixture
def small_nats() -> AsyncIterator[NatsServer]:
    server = NatsServer(config=f"max_payload: {MAX_PAYLOAD}").start()
    yield server
    server.cleanup()


@pytest.fixture
async def stack(small_nats: NatsServer, database_url: str, unique: str) -> AsyncIterator[Stack]:
    applied: list[str] = []
    router = Router()

    async def handler(session: object, envelope: object) -> None:
        applied.append(getattr(envelope, "resource_id", ""))

    router.on_resource("organization", handler)  # type: ignore[arg-type]
    built = await build_stack(make_config(small_nats.url, unique), database_url, router=router)
    built.applied = applied  # type: ignore[attr-defined]
    yield built
    await close_stack(built)


async def test_a_body_near_max_payload_is_dead_lettered_cut_and_nothing_else_stalls(
    stack: Stack,
) -> None:
    # Malformed (not JSON) and just under the limit: the client sends it, the server
    # stores it; its dead letter would be over the limit with the x-dlq-* headers.
    crafted = b"x" * (MAX_PAYLOAD - 64)
    seq = await stack.publish_raw(crafted)
    await stack.publish(org_event(stack.cfg, "after"))
    await stack.start_consumer()

    async def settled() -> bool:
        letters = await stack.dead_letters.list()
        return bool(letters) and "after" in stack.applied  # type: ignore[attr-defined]

    await wait_until(settled, timeout=20)
    [letter] = await stack.dead_letters.list()
    assert (letter.original_seq, letter.reason) == (seq, "malformed")
    assert letter.headers[H_TRUNCATED] == str(len(crafted))
    assert crafted.startswith(letter.data) and len(letter.data) < len(crafted)
    assert stack.connection.reconnects == 0  # the server never closed the connection
    with pytest.raises(ReplayRefusedError, match="cut to fit max_payload"):
        await stack.dead_letters.replay(letter.seq)


async def test_the_publisher_refuses_a_message_over_max_payload_with_its_headers(
    stack: Stack,
) -> None:
    body = b"{}" + b" " * (MAX_PAYLOAD - 100)  # fits alone, not with these headers
    message = OutgoingMessage(stack.cfg.subjects.consume, body, {"x-pad": "p" * 200})
    with pytest.raises(PayloadTooLargeError) as refused:
        await stack.peer.publish_raw(message)
    assert refused.value.rejected and refused.value.limit == MAX_PAYLOAD
    assert stack.connection.reconnects == 0
    await stack.publish(org_event(stack.cfg, "still-works"))
