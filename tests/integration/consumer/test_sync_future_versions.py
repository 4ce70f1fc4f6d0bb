"""The services' sync handlers dead-letter a record version from the future, on both paths.

A payload ``updated_at`` beyond the receiver's clock + ``max_clock_skew`` is never
applied: dead letter ``future_version``.  The batch handler does not judge it in its fast
path: the call raises, the inbox re-runs each delivery alone, and the per-event rule
(the same library helper) decides.  So one such event in a batch costs one fallback and
nothing else: the other events of the batch apply.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from consumer_support import Stack, build_stack, close_stack, make_config
from sqlalchemy import text
from test_inbox import fetch

from bridge.config import BridgeConfig
from bridge.envelope import Envelope, format_timestamp, utcnow
from bridge.ids import compose
from bridge.testing import NatsServer
from bridge.transport.delivery import Outcome
from services.shared.db import migrate
from services.shared.handlers import SyncHandlers

FAR_FUTURE = "9999-12-31T23:59:59.999999Z"


@pytest.fixture(params=[True, False], ids=["batch", "per_event"])
async def sync_stack(
    request: pytest.FixtureRequest, nats_server: NatsServer, database_url: str, unique: str
) -> AsyncIterator[Stack]:
    await migrate(database_url)
    stack = await build_stack(make_config(nats_server.url, unique), database_url)
    SyncHandlers(stack.engine, stack.cfg.app_name).register(stack.router, batch=request.param)
    yield stack
    await close_stack(stack)


def event(cfg: BridgeConfig, resource: str, payload: dict[str, Any]) -> Envelope:
    return Envelope(
        event_type=f"{resource}.created",
        producer=cfg.destination_app,
        resource_type=resource,
        resource_id=str(payload["id"]),
        payload=payload,
        schema_version=2,
    )


_IDS = itertools.count(compose(utcnow(), 0, 1), 64)  # fresh ids, one per tick


def org(cfg: BridgeConfig, at: str) -> dict[str, Any]:
    oid = next(_IDS)
    return {"id": oid, "name": "Org", "domain": f"{oid}.test", "active": True,
            "created_at": format_timestamp(utcnow()), "updated_at": at,
            "origin": cfg.destination_app, "deleted_at": None}  # fmt: skip


def user(cfg: BridgeConfig, org_id: int, at: str) -> dict[str, Any]:
    uid = next(_IDS)
    return {"id": uid, "organization_id": org_id, "name": "Ann", "email": f"{uid}@example.com",
            "role": "member", "active": True, "created_at": format_timestamp(utcnow()),
            "updated_at": at, "origin": cfg.destination_app, "deleted_at": None}  # fmt: skip


async def test_a_future_record_version_is_dead_lettered_and_the_rest_applies(
    sync_stack: Stack,
) -> None:
    stack, cfg = sync_stack, sync_stack.cfg
    now = utcnow()
    just_now = format_timestamp(now)
    ten_minutes_ahead = format_timestamp(now + timedelta(minutes=10))  # default skew: 5 min
    two_minutes_ahead = format_timestamp(now + timedelta(minutes=2))
    o1, o2, o3 = org(cfg, just_now), org(cfg, FAR_FUTURE), org(cfg, two_minutes_ahead)
    u1, u2 = user(cfg, o1["id"], ten_minutes_ahead), user(cfg, o1["id"], just_now)
    events = [
        event(cfg, "organization", o1),
        event(cfg, "organization", o2),
        event(cfg, "organization", o3),
        event(cfg, "user", u1),
        event(cfg, "user", u2),
    ]
    for env in events:
        await stack.publish(env)
    sub = await stack.pull_sub()
    batch = await fetch(stack, sub, len(events))
    outcomes = await stack.processor.process_batch(batch)
    await sub.unsubscribe()

    assert outcomes == [
        Outcome.ACKED, Outcome.DEAD_LETTERED, Outcome.ACKED, Outcome.DEAD_LETTERED, Outcome.ACKED,
    ]  # fmt: skip
    letters = await stack.dead_letters.list()
    assert [letter.reason for letter in letters] == ["future_version", "future_version"]
    assert FAR_FUTURE in letters[0].error_message
    assert ten_minutes_ahead in letters[1].error_message
    async with stack.engine.connect() as conn:
        orgs = set(await conn.scalars(text("SELECT id FROM organizations")))
        users = set(await conn.scalars(text("SELECT id FROM users")))
        statuses = dict(
            (await conn.execute(text("SELECT event_id::text, status FROM bridge_inbox"))).all()
        )
    assert orgs == {o1["id"], o3["id"]} and users == {u2["id"]}
    assert statuses[events[1].event_id] == statuses[events[3].event_id] == "dead_lettered"
    if stack.router.batch_resource_types:  # the batch path fell back once, then decided
        assert (stack.processor.optimistic_batches, stack.processor.fallback_batches) == (0, 1)
