"""The JetStream ack subject parsed for the consumer's hot path, against nats-py's own."""

from __future__ import annotations

import pytest
from nats.aio.msg import Msg

from bridge.errors import EnvelopeError
from bridge.transport.delivery import ack_subject_position

V1 = "$JS.ACK.ORDERS.dur.3.1042.77.1700000000000000000.5"
V2 = "$JS.ACK._.ACCHASH.ORDERS.dur.3.1042.77.1700000000000000000.5.rand"
V2_SHORT = "$JS.ACK.hub.ACCHASH.ORDERS.dur.1.9.8.1700000000000000000.0"


@pytest.mark.parametrize("reply", [V1, V2, V2_SHORT])
def test_same_fields_as_nats_py(reply: str) -> None:
    meta = Msg.Metadata._from_reply(reply)
    assert ack_subject_position(reply) == (meta.stream, meta.sequence.stream, meta.num_delivered)


def test_the_largest_sequence_is_kept_exactly() -> None:
    reply = f"$JS.ACK.S.d.{2**64 - 1}.{2**64 - 1}.1.1.0"
    assert ack_subject_position(reply) == ("S", 2**64 - 1, 2**64 - 1)


@pytest.mark.parametrize(
    "reply",
    [
        None,
        "",
        "_INBOX.abc",
        "$JS.ACK",
        "$JS.ACK.S.d.1.2.3.4",  # 8 tokens
        "$JS.ACK.S.d.1.2.3.4.5.6",  # 10 tokens: neither form
        "$JS.NAK.S.d.1.2.3.4.5",
        "$JS.ACK..d.1.2.3.4.5",  # no stream
        "$JS.ACK.S.d.x.2.3.4.5",
        "$JS.ACK.S.d.1.-2.3.4.5",
        "$JS.ACK.S.d.1.\u0661\u0662.3.4.5",  # Arabic-Indic digits: isdigit() but not ours
        "$JS.ACK.S.d.1." + "9" * 21 + ".3.4.5",  # longer than any 64-bit count
        "$JS.ACK.S.d..2.3.4.5",
    ],
)
def test_anything_else_is_not_a_jetstream_delivery(reply: str | None) -> None:
    with pytest.raises(EnvelopeError, match="not a JetStream delivery"):
        ack_subject_position(reply, "sync.x")
