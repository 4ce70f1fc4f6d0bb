"""Versions from the future and unknown origins never apply (between the two real services).

A crafted event on A's subject, consumed by B's real consumer (batch sync handlers):

- a payload ``updated_at`` of 9999-12-31T23:59:59.999999Z is a dead letter
  ``future_version``; the record is unchanged on B and stays writable (a PATCH on B
  works and syncs back), and later events of the record still apply;
- an ``occurred_at`` far in the future is a dead letter ``future_version``;
- an ``origin`` (or, without one, a ``producer``) that is not a known system is a dead
  letter ``unknown_origin``;
- an event slightly ahead of B's clock (within ``max_clock_skew``) applies;
- a version ahead of a receiver whose clock is behind is dead-lettered, and applies after
  ``bridge dlq replay`` once that clock is fixed (the clock is injected: no patching).
"""

from __future__ import annotations

import io
import json
import uuid
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from e2e_support import Pair, Side, eventually, new_database, new_id, start_side
from nats.js import JetStreamContext

from bridge.cli import EXIT_OK, main_async
from bridge.envelope import Envelope, format_timestamp, utcnow
from bridge.routing.letter import DeadLetter
from bridge.testing import NatsServer, PostgresServer

FAR_FUTURE = "9999-12-31T23:59:59.999999Z"


async def create_synced_org(pair: Pair) -> dict[str, Any]:
    """An organization created on A and arrived on B."""
    token = uuid.uuid4().hex[:10]
    response = await pair.a.client.post(
        "/organizations", json={"name": "Acme", "domain": f"d{token}.test"}
    )
    assert response.status_code == 201, response.text
    org: dict[str, Any] = response.json()

    async def on_b() -> dict[str, Any] | None:
        got = await pair.b.get(f"/organizations/{org['id']}")
        return got.json() if got.status_code == 200 else None

    assert await eventually(on_b, what="organization on B") == org
    return org


async def publish_as(
    js: JetStreamContext,
    side: Side,
    event_type: str,
    payload: dict[str, Any],
    **envelope: Any,
) -> Envelope:
    """Publish an event on ``side``'s subject, as ``side`` would (``envelope``: overrides)."""
    sent = Envelope(
        event_type=event_type,
        producer=envelope.pop("producer", side.config.app_name),
        resource_type=event_type.split(".", 1)[0],
        resource_id=str(payload["id"]),
        payload=payload,
        schema_version=2,
        **envelope,
    )
    await js.publish(side.config.subjects.publish, sent.to_bytes(), headers=sent.headers())
    return sent


async def dead_letters(side: Side, count: int) -> list[DeadLetter]:
    assert side.state.bridge is not None and side.state.bridge.dead_letters is not None
    store = side.state.bridge.dead_letters

    async def stored() -> list[DeadLetter] | None:
        letters = await store.list()
        return letters if len(letters) >= count else None

    return await eventually(stored, what=f"{count} dead letter(s) on {side.name}")


async def inbox_status(side: Side, event_id: str) -> str | None:
    status: str | None = await side.scalar(
        f"SELECT status FROM bridge_inbox WHERE event_id = '{event_id}'"
    )
    return status


def new_org_payload(side: Side, at: str, **over: Any) -> dict[str, Any]:
    oid = new_id()
    now = format_timestamp(utcnow())
    return {"id": oid, "name": "Crafted", "domain": f"c{oid}.crafted.test", "active": True,
            "created_at": now, "updated_at": at, "origin": side.config.app_name,
            "deleted_at": None} | over  # fmt: skip


async def test_far_future_version_is_dead_lettered_and_the_record_stays_writable(
    pair: Pair,
) -> None:
    a, b = pair.a, pair.b
    org = await create_synced_org(pair)
    crafted = await publish_as(
        pair.js, a, "organization.updated",
        {**org, "name": "From the future", "updated_at": FAR_FUTURE, "deleted_at": None},
    )  # fmt: skip
    [letter] = await dead_letters(b, 1)
    assert letter.reason == "future_version"
    assert letter.headers["x-dlq-original-msg-id"] == crafted.event_id
    assert FAR_FUTURE in letter.error_message
    assert await inbox_status(b, crafted.event_id) == "dead_lettered"
    unchanged = await b.get(f"/organizations/{org['id']}")
    assert unchanged.json() == org

    # The record stays writable on B, and the write syncs to A.
    patched = await b.client.patch(f"/organizations/{org['id']}", json={"name": "Still mine"})
    assert patched.status_code == 200, patched.text
    assert patched.json()["updated_at"] > org["updated_at"]

    async def on_a() -> dict[str, Any] | None:
        got = (await a.get(f"/organizations/{org['id']}")).json()
        return got if got["name"] == "Still mine" else None

    assert await eventually(on_a, what="B's write on A") == patched.json()
    # Later events of the record still apply on B (nothing stalled behind the dead letter).
    later = await a.client.patch(f"/organizations/{org['id']}", json={"name": "Later on A"})
    assert later.status_code == 200, later.text

    async def later_on_b() -> dict[str, Any] | None:
        got = (await b.get(f"/organizations/{org['id']}")).json()
        return got if got["name"] == "Later on A" else None

    assert await eventually(later_on_b, what="A's later write on B") == later.json()


async def test_far_future_occurred_at_is_dead_lettered(pair: Pair) -> None:
    a, b = pair.a, pair.b
    payload = new_org_payload(a, format_timestamp(utcnow()))
    crafted = await publish_as(pair.js, a, "organization.created", payload, occurred_at=FAR_FUTURE)
    [letter] = await dead_letters(b, 1)
    assert (letter.reason, letter.error_class) == ("future_version", "Reject")
    assert "occurred_at" in letter.error_message
    assert await inbox_status(b, crafted.event_id) == "dead_lettered"
    assert (await b.get(f"/organizations/{payload['id']}")).status_code == 404


async def test_unknown_origin_is_dead_lettered(pair: Pair) -> None:
    a, b = pair.a, pair.b
    now = format_timestamp(utcnow())
    forged = new_org_payload(a, now, origin="mallory")
    by_origin = await publish_as(pair.js, a, "organization.created", forged, origin="mallory")
    # No origin on the wire: the producer stands for it and must be known itself.
    stranger = new_org_payload(a, now)
    body = Envelope(
        event_type="organization.created", producer="mallory", resource_type="organization",
        resource_id=str(stranger["id"]), payload=stranger, schema_version=2,
    ).to_dict()  # fmt: skip
    del body["origin"]
    await pair.js.publish(
        a.config.subjects.publish,
        json.dumps(body).encode(),
        headers={"Nats-Msg-Id": body["event_id"]},
    )
    letters = await dead_letters(b, 2)
    assert [letter.reason for letter in letters] == ["unknown_origin", "unknown_origin"]
    assert "mallory" in letters[0].error_message
    assert await inbox_status(b, by_origin.event_id) == "dead_lettered"
    for payload in (forged, stranger):
        assert (await b.get(f"/organizations/{payload['id']}")).status_code == 404


async def test_an_event_slightly_ahead_within_the_skew_applies(pair: Pair) -> None:
    a, b = pair.a, pair.b
    ahead = format_timestamp(utcnow() + timedelta(minutes=2))  # default skew: 5 min
    payload = new_org_payload(a, ahead)
    sent = await publish_as(pair.js, a, "organization.created", payload, occurred_at=ahead)

    async def applied() -> dict[str, Any] | None:
        got = await b.get(f"/organizations/{payload['id']}")
        return got.json() if got.status_code == 200 else None

    stored = await eventually(applied, what="the slightly-ahead event on B")
    assert stored["updated_at"] == ahead
    assert await inbox_status(b, sent.event_id) == "processed"


@dataclass
class SettableClock:
    """An injected clock: real time plus an offset the test sets."""

    offset: timedelta = timedelta(0)

    def __call__(self) -> datetime:
        return utcnow() + self.offset


async def test_a_future_version_applies_after_the_clock_is_fixed_and_dlq_replay(
    nats_server: NatsServer, postgres: PostgresServer, unique: str
) -> None:
    stream = f"sync-{unique}"
    clock_b = SettableClock(offset=timedelta(minutes=-10))  # B's clock is 10 min behind
    common = {"stream": stream, "nats_url": nats_server.url}
    async with AsyncExitStack() as stack:
        a = await start_side(stack, postgres, name=f"a{unique}", peer=f"b{unique}", **common)
        b_url = await new_database(stack, postgres)
        b = await start_side(
            stack, postgres, name=f"b{unique}", peer=f"a{unique}", database_url=b_url,
            clock=clock_b, **common,
        )  # fmt: skip
        response = await a.client.post(
            "/organizations", json={"name": "Ahead", "domain": f"{unique}.ahead.test"}
        )
        assert response.status_code == 201, response.text
        org = response.json()
        [letter] = await dead_letters(b, 1)
        assert letter.reason == "future_version"
        assert (await b.get(f"/organizations/{org['id']}")).status_code == 404

        clock_b.offset = timedelta(0)  # the clock is fixed
        env = {
            "APP_NAME": b.config.app_name,
            "DESTINATION_APP": a.config.app_name,
            "STREAM_NAME": stream,
            "NATS_URL": nats_server.url,
            "DATABASE_URL": b_url,
        }
        out, err = io.StringIO(), io.StringIO()
        code = await main_async(
            ["--json", "dlq", "replay", str(letter.seq)], env=env, out=out, err=err
        )
        assert code == EXIT_OK, err.getvalue()

        async def replayed() -> dict[str, Any] | None:
            got = await b.get(f"/organizations/{org['id']}")
            return got.json() if got.status_code == 200 else None

        assert await eventually(replayed, what="the replayed event on B") == org
