"""The catalog describes what is really stored: the headers of events as published and of
dead letters as the consumer writes them (one rejected, one malformed, one that
outgrows max_deliver) validate against the catalog's header schemas."""

from __future__ import annotations

from consumer_support import Stack, org_event, wait_until
from jsonschema import Draft7Validator
from sqlalchemy.ext.asyncio import AsyncSession

from bridge import EventSchemas
from bridge.catalog import asyncapi
from bridge.envelope import Envelope
from bridge.errors import Reject


async def test_stored_events_and_dead_letters_fit_the_catalog_headers(stack: Stack) -> None:
    async def handler(session: AsyncSession, env: Envelope) -> None:
        if env.payload.get("mode") == "reject":
            raise Reject("domain taken", reason="conflict")
        raise RuntimeError("a bug\nacross lines")

    stack.router.on_resource("organization", handler)
    cfg = stack.cfg
    document = asyncapi(cfg, EventSchemas())
    schemas = document["components"]["schemas"]
    letter_headers = Draft7Validator(schemas["deadLetterHeaders"])
    event_headers = Draft7Validator(schemas["publishHeaders"])

    rejected = org_event(cfg, "r", mode="reject")
    published = await stack.publish(rejected)
    await stack.publish(org_event(cfg, "b", mode="broken"))
    await stack.publish_raw(b"\xff not json", {"traceparent": "not a trace context"})
    await stack.start_consumer()

    async def three_dead() -> bool:
        return len(await stack.dead_letters.list()) >= 3

    await wait_until(three_dead, timeout=20)
    stored = await stack.connection.js.get_msg(cfg.stream_name, seq=published.seq)
    assert list(event_headers.iter_errors(dict(stored.headers or {}))) == []

    letters = {letter.reason: letter for letter in await stack.dead_letters.list()}
    assert set(letters) == {"conflict", "max_deliver_exceeded", "malformed"}
    for reason in ("conflict", "max_deliver_exceeded"):
        errors = [e.message for e in letter_headers.iter_errors(letters[reason].headers)]
        assert errors == [], reason
    # a forged trace header travels with the original into the letter: the catalog
    # describes what the bridge writes, and says this one is not a trace context
    malformed = [e.message for e in letter_headers.iter_errors(letters["malformed"].headers)]
    assert len(malformed) == 1 and "does not match" in malformed[0]
