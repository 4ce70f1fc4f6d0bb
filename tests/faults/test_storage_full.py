"""A full JetStream store is unavailability, never a rejection of the message.

The relay counts only *rejections* towards ``relay.max_attempts`` (then the outbox row
turns ``failed`` and waits for an operator); unavailability is retried for as long as
it lasts.  A full store says nothing about the message — the same message is stored
once space is freed — so both ways a server refuses for lack of space must be
unavailability.  The account limit was not: its answer is a 400 (err_code 10002), and
the publisher called every 4xx a rejection, so with storage full every outbox row
turned ``failed`` after ``max_attempts`` and sync stopped for good.
"""

from __future__ import annotations

import nats
import pytest
from fault_storage import Limit, cleanup, limited_nats, raise_limit

from bridge.errors import PublishError
from bridge.transport.publisher import OutgoingMessage, Publisher

BODY = b"x" * 4000


@pytest.mark.parametrize("kind", ["account", "server"])
async def test_storage_full_is_unavailability_and_the_same_message_goes_through_later(
    kind: Limit, unique: str
) -> None:
    server = limited_nats(kind, "256KB")
    try:
        nc = await nats.connect(server.url)
        try:
            js = nc.jetstream(timeout=5)
            await js.add_stream(name=f"s{unique}", subjects=[f"s{unique}.>"])
            publisher = Publisher(js, stream=f"s{unique}", timeout=5.0)
            refused: PublishError | None = None
            for n in range(200):
                message = OutgoingMessage(f"s{unique}.a", BODY, {"Nats-Msg-Id": f"m{n}"})
                try:
                    await publisher.publish_raw(message)
                except PublishError as exc:
                    refused = exc
                    break
            assert refused is not None, "the store never filled up"
            assert not refused.rejected, f"a full store counted as a rejection: {refused}"
            assert "storage" in str(refused) or "resources" in str(refused)

            await raise_limit(server, kind, "4MB")
            result = await publisher.publish_raw(message)  # the very message refused
            assert not result.duplicate
        finally:
            await nc.close()
    finally:
        cleanup(server)
