"""Decoding an untrusted body: every hostile shape is an EnvelopeError naming the limit or
field — never a RecursionError, OverflowError, UnicodeDecodeError or a database error
later (pure logic; the consumer-level proof is tests/integration/consumer/test_poison.py)."""

from __future__ import annotations

import json
import random
import time
import uuid
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker

from bridge._envelope_limits import EnvelopeLimits, json_depth_exceeds
from bridge.config import BridgeConfig, ConsumerOptions
from bridge.envelope import MSG_ID_HEADER, Envelope
from bridge.errors import ConfigError, EnvelopeError
from bridge.inbox.processor import InboxProcessor
from bridge.routing.router import Router
from bridge.schema import inbox
from bridge.transport.delivery import StoredMessage


def body(**changes: Any) -> dict[str, Any]:
    env = Envelope(
        event_type="organization.updated",
        producer="system_a",
        resource_type="organization",
        resource_id=str(uuid.uuid4()),
        payload={"name": "Acme", "tags": ["a", "b"], "nested": {"k": [1, 2.5, None]}},
    )
    data = env.to_dict()
    data.update(changes)
    return data


def encode(data: dict[str, Any]) -> bytes:
    return json.dumps(data).encode()


def nested(depth: int) -> Any:
    value: Any = 1
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


def test_a_plain_envelope_decodes_and_limits_default_from_consumer_options() -> None:
    limits = EnvelopeLimits.from_options(ConsumerOptions())
    assert limits == EnvelopeLimits()
    assert (limits.max_body_bytes, limits.max_json_depth, limits.max_id_length) == (
        1024 * 1024, 32, 255,
    )  # fmt: skip
    data = body()
    env = Envelope.from_bytes(encode(data), limits=limits)
    assert env.payload == data["payload"]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "max_json_depth"),
        (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "max_json_depth"),
        (encode(body(payload={"deep": nested(40)})), "max_json_depth"),
        (b"\xff\xfe" + encode(body()), "UTF-8"),
        (encode(body()).replace(b'"Acme"', b'"\xc3\x28"'), "UTF-8"),
        (encode(body()).replace(b'"Acme"', b"NaN"), "NaN"),
        (encode(body()).replace(b'"Acme"', b"-Infinity"), "Infinity"),
        (encode(body()).replace(b'"Acme"', b"1e999"), "finite"),
        (encode(body()).replace(b'"Acme"', b"1" * 5000), "integer"),
        (encode(body(payload={"n": 2**63})), "integer"),
        (encode(body())[:-1] + b', "resource_id": "other"}', "duplicate key 'resource_id'"),
        (encode(body(payload={"a": 1})).replace(b'{"a": 1}', b'{"a": 1, "a": 2}'), "duplicate"),
        (encode(body(resource_id="r" * 256)), "resource_id"),
        (encode(body(resource_id="r\u0000")), "resource_id"),
        (encode(body(resource_id="\ud800")), "resource_id"),
        (encode(body(resource_id={"id": 1})), "resource_id"),
        (encode(body(event_type="organization." + "x" * 200)), "event_type"),
        (encode(body(resource_type="o" * 129)), "resource_type"),
        (encode(body(producer="p" * 129)), "producer"),
        (encode(body(origin=["system_a"])), "origin"),
        (encode(body(trace_id={"x": 1})), "trace_id"),
        (encode(body(trace_id="t" * 300)), "trace_id"),
        (encode(body(causation_id=7)), "causation_id"),
        (encode(body(occurred_at="0001-01-01T00:00:00+14:00")), "occurred_at"),
        (encode(body(occurred_at="9999-12-31T23:59:59-14:00")), "occurred_at"),
        (encode(body(occurred_at="2026-01-01T00:00:00Z" + " " * 100)), "occurred_at"),
        (encode(body(event_id=f"urn:uuid:{uuid.uuid4()}")), "event_id"),
        (encode(body(event_id=uuid.uuid4().hex)), "event_id"),
        (encode(body(event_id=12345)), "event_id"),
        (encode(body(schema_version=2**70)), "integer"),
        (b"\x00" * 10, "not valid JSON"),
    ],
)
def test_hostile_bodies_are_envelope_errors_naming_the_limit_or_field(
    data: bytes, match: str
) -> None:
    with pytest.raises(EnvelopeError, match=match):
        Envelope.from_bytes(data)


def test_the_size_limit_is_checked_before_anything_is_parsed() -> None:
    limits = EnvelopeLimits(max_body_bytes=1000)
    small = encode(body())
    assert Envelope.from_bytes(small, limits=limits).event_type == "organization.updated"
    huge_garbage = b"[" * 5_000_000  # parsing this would take a while; the size alone decides
    started = time.perf_counter()
    with pytest.raises(EnvelopeError, match=r"5000000 bytes.*max_body_bytes \(1000\)"):
        Envelope.from_bytes(huge_garbage, limits=limits)
    assert time.perf_counter() - started < 0.5


def test_depth_and_id_limits_follow_the_configuration() -> None:
    at_limit = encode(body(payload={"deep": nested(30)}))  # envelope + payload + 30 = 32
    Envelope.from_bytes(at_limit)
    with pytest.raises(EnvelopeError, match="max_json_depth"):
        Envelope.from_bytes(at_limit, limits=EnvelopeLimits(max_json_depth=31))
    long_id = encode(body(resource_id="r" * 100))
    Envelope.from_bytes(long_id)
    with pytest.raises(EnvelopeError, match=r"resource_id.*max_id_length \(64\)"):
        Envelope.from_bytes(long_id, limits=EnvelopeLimits(max_id_length=64))


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    tricky = body(payload={"s": "[[[{{{" * 1000, "q": 'say "[[[[" \\ ok' * 50})
    env = Envelope.from_bytes(encode(tricky))
    assert env.payload["s"].startswith("[[[{{{")
    assert not json_depth_exceeds(json.dumps(tricky), 32)
    assert json_depth_exceeds("[" * 33 + "]" * 33, 32)
    assert not json_depth_exceeds("[" * 32 + "]" * 32, 32)
    # an escaped backslash ends its string: the brackets after it do nest
    assert json_depth_exceeds('["\\\\", ' + "[" * 40 + "]" * 41, 32)
    assert not json_depth_exceeds('["\\"' + "[" * 40, 32)  # still inside the string
    # brackets in an unterminated string nest nothing: the parser fails, not recurses
    with pytest.raises(EnvelopeError, match="not valid JSON"):
        Envelope.from_bytes(b'"' + b"[" * 100_000)


def test_the_event_id_header_still_has_to_match() -> None:
    data = body()
    with pytest.raises(EnvelopeError, match="does not match"):
        Envelope.from_bytes(encode(data), {MSG_ID_HEADER: str(uuid.uuid4())})
    upper = body(event_id=str(uuid.uuid4()).upper())
    assert Envelope.from_bytes(encode(upper)).event_id == upper["event_id"]


def test_limits_fit_the_inbox_columns_and_are_validated() -> None:
    for column in ("event_type", "resource_type"):
        assert EnvelopeLimits().max_name_length <= inbox.c[column].type.length
    assert ConsumerOptions().max_id_length <= inbox.c.resource_id.type.length
    with pytest.raises(ConfigError, match=r"consumer\.max_id_length"):
        ConsumerOptions(max_id_length=256)
    with pytest.raises(ConfigError, match=r"consumer\.max_json_depth"):
        ConsumerOptions(max_json_depth=1)
    with pytest.raises(ConfigError, match=r"consumer\.max_json_depth"):
        ConsumerOptions(max_json_depth=10_000)
    with pytest.raises(ConfigError, match=r"consumer\.max_body_bytes"):
        ConsumerOptions(max_body_bytes=0)


class Killer(BaseException):
    """Not an Exception: decode must let it through (the consumer's supervisor handles it)."""


def test_decode_gives_the_partition_key_and_never_raises_for_a_body() -> None:
    cfg = BridgeConfig(app_name="a", destination_app="b")
    processor = InboxProcessor(cfg, async_sessionmaker(), Router(), None)

    def message(data: bytes) -> StoredMessage:
        return StoredMessage(data=data, headers=None, subject="b.sync.a", stream="s", stream_seq=1)

    good = processor.decode(message(encode(body(resource_id="42"))))  # type: ignore[arg-type]
    assert good.decision is None and good.key == "organization:42"
    for data in (b"{not json", b"[1, 2]", b"[" * 100_000, encode(body(resource_id="r" * 300))):
        item = processor.decode(message(data))  # type: ignore[arg-type]
        assert item.key == "" and item.envelope is None and item.record is False
        assert item.decision is not None and item.decision.reason == "malformed"
        assert isinstance(item.error, EnvelopeError)


def test_decode_turns_an_unexpected_error_into_a_malformed_decision() -> None:
    processor = InboxProcessor(BridgeConfig(app_name="a", destination_app="b"),
                               async_sessionmaker(), Router(), None)  # fmt: skip

    class Odd:
        headers = None
        subject, stream, stream_seq, num_delivered = "b.sync.a", "s", 1, 1

        @property
        def data(self) -> bytes:
            raise LookupError("the body went missing")

    item = processor.decode(Odd())  # type: ignore[arg-type]
    assert item.decision is not None and item.decision.reason == "malformed"
    assert "LookupError" in str(item.error)

    class Fatal(Odd):
        @property
        def data(self) -> bytes:
            raise Killer("not mine to catch")

    with pytest.raises(Killer):
        processor.decode(Fatal())  # type: ignore[arg-type]


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def test_the_depth_check_agrees_with_the_real_depth_of_random_documents() -> None:
    rng = random.Random(20261202)
    tricky = ['"', "\\", "[", "]", "{", "}", "\\\\", '\\"', "x", "\u00e9", "\n"]

    def text() -> str:
        return "".join(rng.choice(tricky) for _ in range(rng.randint(0, 8)))

    def value(depth: int) -> Any:
        kind = rng.random()
        if depth <= 0 or kind < 0.3:
            return rng.choice([text(), 1, 2.5, None, True])
        if kind < 0.65:
            return [value(depth - 1) for _ in range(rng.randint(0, 4))]
        return {text(): value(depth - 1) for _ in range(rng.randint(0, 4))}

    for _ in range(400):
        document = value(rng.randint(1, 12))
        encoded = json.dumps(document, ensure_ascii=rng.random() < 0.5)
        depth = _depth(document)
        assert not json_depth_exceeds(encoded, depth), encoded
        if depth > 1:
            assert json_depth_exceeds(encoded, depth - 1), encoded
