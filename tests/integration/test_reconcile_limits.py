"""Hostile reconciliation requests over real NATS and PostgreSQL: anyone who may publish on
``{app}.bridge.reconcile`` is untrusted.  Each request is refused before any scan when
it asks for too much, with a generic reply (a code and a fixed message; the detail goes
to the responder's log), requests beyond ``reconcile.max_concurrent_requests`` are told
"busy" at once, a slow one ends at ``reconcile.statement_timeout``, the metrics count
every outcome, and a normal request and a normal pass are still served."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bridge.config import BridgeConfig, ReconcileOptions
from bridge.observability.metrics import BridgeMetrics
from bridge.outbox.capture import Outbox
from bridge.reconcile import _protocol as proto
from bridge.reconcile._digest import WHOLE, KeyRange, LocalSide, ModelDigests
from bridge.reconcile.reconciler import Reconciler
from bridge.reconcile.responder import ReconcileResponder
from bridge.testing import NatsServer, PostgresServer
from services.shared.db import migrate
from services.shared.models import Organization, User

SEED = (
    """
    INSERT INTO organizations (id, name, domain, active, created_at, updated_at, origin)
    SELECT 1 + (i::bigint * 2654435761) % 9007199254740990, 'Org ' || i,
           'org' || i || '.example', true,
           timestamptz '2026-01-01 00:00:00+00' + i * interval '1 second',
           timestamptz '2026-02-01 00:00:00+00' + i * interval '1 second', 'a'
      FROM generate_series(1, :n) AS i
    """,
    """
    INSERT INTO users (id, organization_id, name, email, role, active, created_at,
                       updated_at, origin)
    SELECT 1 + (i::bigint * 40503) % 9007199254740990,
           1 + (i::bigint * 2654435761) % 9007199254740990, 'User ' || i,
           'user' || i || '@example.com', 'member', true,
           timestamptz '2026-01-01 00:00:00+00' + i * interval '1 second',
           timestamptz '2026-02-01 00:00:00+00' + i * interval '1 second', 'a'
      FROM generate_series(1, :n) AS i
    """,
)
#: Generous bound for "refused at once": far below what a scan of the table would take
#: on a loaded machine, far above what a refusal needs.
AT_ONCE = 10.0
FIELDS = {"v", "ok", "code", "error", "request_id"}


async def seed(engine: AsyncEngine, n: int) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("SET LOCAL bridge.capture = 'off'"))  # data from before sync
        for statement in SEED:
            await conn.execute(text(statement), {"n": n})


@pytest.fixture
async def two_dbs(postgres: PostgresServer) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine]]:
    engines = []
    for _ in range(2):
        url = await postgres.create_database()
        await migrate(url)
        engines.append((url, create_async_engine(url)))
    try:
        yield engines[0][1], engines[1][1]
    finally:
        for url, engine in engines:
            await engine.dispose()
            await postgres.drop_database(url)


def configs(nats_url: str, unique: str, **options: Any) -> tuple[BridgeConfig, BridgeConfig]:
    """(requester A, responder B) of one pair."""
    reconcile = ReconcileOptions(**options)
    a = BridgeConfig(
        app_name=f"a{unique}",
        destination_app=f"b{unique}",
        nats_urls=(nats_url,),
        reconcile=reconcile,
    )
    b = BridgeConfig(
        app_name=f"b{unique}",
        destination_app=f"a{unique}",
        nats_urls=(nats_url,),
        reconcile=reconcile,
    )
    return a, b


async def ask(nc: Client, subject: str, body: bytes, timeout: float = AT_ONCE) -> dict[str, Any]:
    msg = await nc.request(subject, body, timeout=timeout)
    reply: dict[str, Any] = json.loads(msg.data)
    return reply


def assert_refused(reply: dict[str, Any], code: str) -> None:
    """Refused with ``code`` and nothing else: the fixed message, a request id."""
    assert reply["ok"] is False, reply
    assert reply["code"] == code, reply
    assert reply["error"] == proto.REFUSALS[code]
    assert set(reply) == FIELDS
    assert isinstance(reply["request_id"], str) and 0 < len(reply["request_id"]) <= 32


def requests_by_result(metrics: BridgeMetrics) -> dict[str, float]:
    found: dict[str, float] = {}
    for family in metrics.registry.collect():
        if family.name == "bridge_reconcile_requests":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    found[sample.labels["result"]] = sample.value
    return found


def request(op: str, resource: str, **fields: Any) -> bytes:
    return json.dumps({"v": 2, "op": op, "resource": resource, **fields}).encode()


def int_key(i: int) -> list[int]:
    return [i]


#: 256 adjacent ranges covering the whole id space (below 2**53).
LEAVES = [
    [None if i == 0 else int_key(i << 45), None if i == 255 else int_key((i + 1) << 45)]
    for i in range(256)
]


HOSTILE: list[tuple[str, bytes, str]] = [
    # About 20 KB asking for every row of the table at leaf granularity.
    ("whole table as 256 leaves", request("rows", "user", ranges=LEAVES), "too_large"),
    ("whole table as one leaf", request("rows", "user", ranges=[[None, None]]), "too_large"),
    (
        "the whole table 256 times",
        request("digests", "user", ranges=[[None, None]] * 256),
        "bad_request",
    ),
    (
        "overlapping ranges",
        request("rows", "user", ranges=[[int_key(1), int_key(9)], [int_key(5), None]]),
        "bad_request",
    ),
    ("an empty range", request("rows", "user", ranges=[[int_key(1), int_key(1)]]), "bad_request"),
    (
        "an inverted range",
        request("rows", "user", ranges=[[int_key(2), int_key(1)]]),
        "bad_request",
    ),
    ("too many ranges", request("digests", "user", ranges=[*LEAVES, [None, None]]), "too_large"),
    ("33 ranges to split", request("split", "user", ranges=LEAVES[:33]), "too_large"),
    (
        "20,000 keys",
        request("reemit", "user", keys=[int_key(i) for i in range(20_000)]),
        "too_large",
    ),
    ("513 keys", request("reemit", "user", keys=[int_key(i) for i in range(513)]), "too_large"),
    ("keys that are not arrays", request("reemit", "user", keys=["a", "b"]), "bad_request"),
    ("keys that are not integers", request("reemit", "user", keys=[["nope"]]), "bad_request"),
    ("a string for an integer key", request("reemit", "user", keys=[["7"]]), "bad_request"),
    ("a float for an integer key", request("reemit", "user", keys=[[7.0]]), "bad_request"),
    ("a bool for an integer key", request("reemit", "user", keys=[[True]]), "bad_request"),
    ("a key beyond bigint", request("reemit", "user", keys=[[2**64]]), "bad_request"),
    (
        "a key of two parts for one",
        request("reemit", "user", keys=[[int_key(1)[0], 1]]),
        "bad_request",
    ),
    ("a bound of the wrong arity", request("rows", "user", ranges=[[None, [1, 2]]]), "bad_request"),
    ("ranges nested", request("rows", "user", ranges=[[[[["0"]]], None]]), "bad_request"),
    ("deeply nested body", b"[" * 30_000 + b"]" * 30_000, "bad_request"),
    (
        "deeply nested field",
        b'{"v":2,"op":"rows","resource":"user","ranges":' + b"[" * 20_000 + b"]" * 20_000 + b"}",
        "bad_request",
    ),
    ("garbage", b"\xff\xfe\x00\x13garbage{", "bad_request"),
    ("not an object", b'"rows"', "bad_request"),
    ("version true", b'{"v":true,"op":"rows","resource":"user","ranges":[]}', "bad_request"),
    ("the old version", b'{"v":1,"op":"rows","resource":"user","ranges":[""]}', "bad_request"),
    ("unknown field", request("rows", "user", ranges=[], extra=1), "bad_request"),
    ("unknown op", request("drop", "user"), "bad_request"),
    ("ranges not a list", request("rows", "user", ranges="0123"), "bad_request"),
    ("huge resource name", request("rows", "u" * 10_000, ranges=[]), "bad_request"),
    ("unknown resource", request("rows", "invoice", ranges=[[None, None]]), "unknown_resource"),
    ("oversized body", b" " * (proto.MAX_REQUEST_BYTES + 1), "too_large"),
]


async def test_hostile_requests_are_refused_at_once_with_generic_replies(
    two_dbs: tuple[AsyncEngine, AsyncEngine], nats_server: NatsServer, unique: str
) -> None:
    _, engine = two_dbs
    await seed(engine, 20_000)
    _, config = configs(nats_server.url, unique)
    metrics = BridgeMetrics()
    nc = await nats.connect(nats_server.url)
    responder = ReconcileResponder(
        LocalSide(config, nc, engine, (Organization, User), outbox=Outbox(config)),
        observer=metrics,
    )
    await responder.start()
    subject = config.subjects.reconcile
    expected: dict[str, int] = {}
    try:
        for what, body, code in HOSTILE:
            reply = await asyncio.wait_for(ask(nc, subject, body), AT_ONCE)
            assert_refused(reply, code)
            assert "invoice" not in json.dumps(reply), what  # nothing of the request echoed
            expected[code] = expected.get(code, 0) + 1
        # A million ids never reach the network (NATS' 1 MB payload limit): asked in process.
        million = request("reemit", "user", keys=[int_key(i) for i in range(1_000_000)])
        assert_refused(json.loads(await responder.answer(million)), "too_large")
        expected["too_large"] += 1
        # ... and the responder still answers normal requests, fully.
        reply = await ask(nc, subject, proto.Request("digests", "user", ranges=(WHOLE,)).encode())
        assert reply["ok"] is True and proto.digests_of(reply, [WHOLE])[0].count == 20_000
        narrow = KeyRange((40_000,), (4_000_000,))  # users 1..98 of the seed
        rows = await ask(nc, subject, proto.Request("rows", "user", ranges=(narrow,)).encode())
        assert rows["ok"] is True and 0 < len(proto.rows_of(rows, ModelDigests(User))) < 200
        expected["ok"] = 2
    finally:
        await responder.stop(timeout=10)
        await nc.close()
    counted = requests_by_result(metrics)
    assert {k: v for k, v in counted.items() if v} == expected
    assert set(counted) >= {"ok", "busy", "timeout", "internal", *proto.REFUSALS}


async def test_beyond_the_limit_is_busy_at_once_and_a_slow_request_times_out(
    two_dbs: tuple[AsyncEngine, AsyncEngine], nats_server: NatsServer, unique: str
) -> None:
    local, engine = two_dbs
    await seed(local, 200)
    await seed(engine, 200)
    requester_config, config = configs(
        nats_server.url,
        unique,
        max_concurrent_requests=2,
        statement_timeout="5s",
        request_timeout="30s",
    )
    metrics = BridgeMetrics()
    nc = await nats.connect(nats_server.url)
    responder = ReconcileResponder(
        LocalSide(config, nc, engine, (Organization, User), outbox=Outbox(config)),
        observer=metrics,
    )
    await responder.start()
    subject = config.subjects.reconcile
    whole = proto.Request("digests", "user", ranges=(WHOLE,)).encode()
    holder = await engine.connect()  # holds the users table: requests on it wait
    await holder.execute(text("LOCK TABLE users IN ACCESS EXCLUSIVE MODE"))
    try:
        slow = [asyncio.create_task(ask(nc, subject, whole, timeout=60)) for _ in range(2)]
        other = proto.Request("digests", "organization", ranges=(WHOLE,)).encode()
        busy = await asyncio.wait_for(ask(nc, subject, other), AT_ONCE)
        assert_refused(busy, "busy")
        assert not any(task.done() for task in slow)  # answered while both still wait
        # The slow ones end at statement_timeout with a generic reply, lock or not.
        for reply in await asyncio.wait_for(asyncio.gather(*slow), 60):
            assert_refused(reply, "timeout")
        assert (await ask(nc, subject, other))["ok"] is True

        # A reconciliation pass that finds the peer busy retries until it is served.
        blockers = [asyncio.create_task(ask(nc, subject, whole, timeout=60)) for _ in range(2)]
        await _until(lambda: responder.in_flight == 2)
        reconciler = Reconciler(
            LocalSide(
                requester_config, nc, local, (Organization, User), outbox=Outbox(requester_config)
            )
        )
        passing = asyncio.create_task(reconciler.run())
        await _until(lambda: requests_by_result(metrics)["busy"] >= 2)  # it was refused
        await holder.rollback()  # the blockers finish, the pass goes on
        report = await asyncio.wait_for(passing, 60)
        assert report.error is None and report.rows_repaired == 0
        assert report.ranges_compared == 2
        for reply in await asyncio.gather(*blockers):  # served once the lock went (or
            assert reply["ok"] is True or reply["code"] == "timeout"  # timed out before)
    finally:
        await holder.close()
        await responder.stop(timeout=10)
        await nc.close()
    counted = requests_by_result(metrics)
    assert counted["timeout"] >= 2 and counted["busy"] >= 2
    assert sum(counted.values()) == responder.requests


async def test_a_flood_gets_answers_and_a_normal_pass_still_runs(
    two_dbs: tuple[AsyncEngine, AsyncEngine], nats_server: NatsServer, unique: str
) -> None:
    local, engine = two_dbs
    await seed(local, 5_000)
    await seed(engine, 5_000)
    requester_config, config = configs(
        nats_server.url, unique, max_concurrent_requests=2, request_timeout="60s"
    )
    metrics = BridgeMetrics()
    nc = await nats.connect(nats_server.url)
    flooder = await nats.connect(nats_server.url)
    responder = ReconcileResponder(
        LocalSide(config, nc, engine, (Organization, User), outbox=Outbox(config)),
        observer=metrics,
    )
    await responder.start()
    subject = config.subjects.reconcile
    heavy = proto.Request("digests", "user", ranges=(WHOLE,)).encode()
    flood = [heavy, HOSTILE[0][1], b"garbage"] * 100
    try:
        asks = [asyncio.create_task(ask(flooder, subject, body, timeout=60)) for body in flood]
        reconciler = Reconciler(
            LocalSide(
                requester_config, nc, local, (Organization, User), outbox=Outbox(requester_config)
            )
        )
        report = await asyncio.wait_for(reconciler.run(), 60)
        replies = await asyncio.wait_for(asyncio.gather(*asks), 60)
    finally:
        await responder.stop(timeout=10)
        await flooder.close()
        await nc.close()
    assert report.error is None and report.rows_repaired == 0
    for reply in replies:  # every request answered: served, or refused generically
        if not reply["ok"]:
            assert_refused(reply, reply["code"])
    counted = requests_by_result(metrics)
    assert sum(counted.values()) == responder.requests >= len(flood) + report.requests


async def _until(check: Any, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)
