"""How :class:`bridge.transport.publisher.Publisher` classifies JetStream's answers (pure logic: a
stand-in JetStream context raises the errors nats-py builds from the server's reply).

Only a refusal of the message itself is a *rejection* (counts towards
``relay.max_attempts``); capacity answers — storage full, a duplicate still in
process, too many requests — pass by themselves, whatever their status code.  The
real-server cases (account and server storage full) are in
``tests/faults/test_storage_full.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
from nats.js.errors import APIError

from bridge.errors import PublishError
from bridge.transport.publisher import OutgoingMessage, Publisher


class Refusing:
    """Answers every publish with one JetStream API error."""

    def __init__(self, error: APIError) -> None:
        self.error = error

    async def publish(self, *args: Any, **kwargs: Any) -> Any:
        raise self.error


@pytest.mark.parametrize(
    ("code", "err_code", "description", "rejected"),
    [
        (400, 10054, "message size exceeds maximum allowed", True),
        (400, 10097, "header size exceeds maximum allowed of 64k", True),
        (400, 10002, "resource limits exceeded for account", False),
        (409, 10158, "duplicate message id is in process", False),
        (429, 10167, "too many requests", False),
        (503, 10023, "insufficient resources", False),
        (503, 10077, "maximum bytes exceeded", False),
        (500, 10051, "stream failure", False),
    ],
)
async def test_only_a_refusal_of_the_message_is_a_rejection(
    code: int, err_code: int, description: str, rejected: bool
) -> None:
    error = APIError(code=code, err_code=err_code, description=description)
    publisher = Publisher(Refusing(error), stream="s")  # type: ignore[arg-type]
    with pytest.raises(PublishError) as caught:
        await publisher.publish_raw(OutgoingMessage("s.a", b"{}", {}))
    assert caught.value.rejected is rejected
    assert description in str(caught.value)
