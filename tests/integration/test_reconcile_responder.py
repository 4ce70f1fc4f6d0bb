"""Range digests across two real databases, and the reconcile responder over real NATS."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import nats
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bridge.config import BridgeConfig
from bridge.outbox.body import envelope_sql
from bridge.outbox.capture import Outbox
from bridge.reconcile import _protocol as proto
from bridge.reconcile._digest import WHOLE, LocalSide, ModelDigests
from bridge.reconcile.responder import ReconcileResponder
from bridge.testing import NatsServer, PostgresServer
from services.shared.db import migrate
from services.shared.models import Organization, User

SEED = (
    """
    INSERT INTO organizations (id, name, domain, active, created_at, updated_at, origin)
    SELECT 1000 + i, 'Org ' || i, 'org' || i || '.example', i % 7 <> 0,
           timestamptz '2026-01-01 00:00:00+00' + i * interval '1.000001 second',
           timestamptz '2026-02-01 00:00:00+00' + i * interval '1.000001 second', 'a'
      FROM generate_series(1, :n) AS i
    """,
    """
    INSERT INTO users (id, organization_id, name, email, role, active, created_at,
                       updated_at, origin, deleted_at)
    SELECT 2000 + i, 1000 + i, 'User "' || i || '"',
           'user' || i || '@example.com', 'member', true,
           timestamptz '2026-01-01 00:00:00+00' + i * interval '1 second',
           timestamptz '2026-02-01 00:00:00+00' + i * interval '1 second', 'a',
           CASE WHEN i % 5 = 0 THEN timestamptz '2026-03-01 12:00:00.123456+00' END
      FROM generate_series(1, :n) AS i
    """,
)


async def seed(engine: AsyncEngine, n: int) -> None:
    async with engine.begin() as conn:
        # data from before sync was on: not captured (the tables have capture triggers)
        await conn.execute(text("SET LOCAL bridge.capture = 'off'"))
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


async def test_equal_rows_give_equal_digests_across_databases_and_time_zones(
    two_dbs: tuple[AsyncEngine, AsyncEngine],
) -> None:
    a, b = two_dbs
    await seed(a, 300)
    async with b.begin() as conn:  # seeded in another session time zone: same instants
        await conn.execute(text("SET LOCAL TimeZone = 'America/New_York'"))
        await conn.execute(text("SET LOCAL bridge.capture = 'off'"))
        for statement in SEED:
            await conn.execute(text(statement), {"n": 300})
    for model in (Organization, User):
        digests = ModelDigests(model)
        async with a.connect() as conn_a, b.connect() as conn_b:
            await conn_b.execute(text("SET TimeZone = 'Asia/Kolkata'"))
            (cuts,) = await digests.split(conn_a, [WHOLE])
            assert (cuts,) == tuple(await digests.split(conn_b, [WHOLE]))
            ranges = [WHOLE, *WHOLE.children(cuts)]
            on_a = await digests.digests(conn_a, ranges[:1]) + await digests.digests(
                conn_a, ranges[1:]
            )
            on_b = await digests.digests(conn_b, ranges[:1]) + await digests.digests(
                conn_b, ranges[1:]
            )
            assert on_a == on_b
            assert len(cuts) == 15 and all(18 <= d.count <= 19 for d in on_a[1:])
            assert on_a[0].count == 300 and sum(d.count for d in on_a[1:]) == 300
            assert await digests.rows(conn_a, ranges[3:4]) == await digests.rows(
                conn_b, ranges[3:4]
            )
    # One microsecond of difference in one column changes that row's range and no other.
    async with b.begin() as conn:
        await conn.execute(text("SET LOCAL bridge.capture = 'off'"))  # drift, not a change
        changed = await conn.scalar(
            text(
                "UPDATE users SET created_at = created_at + interval '1 microsecond' "
                "WHERE id = 2007 RETURNING id"
            )
        )
    digests = ModelDigests(User)
    async with a.connect() as conn_a, b.connect() as conn_b:
        (cuts,) = await digests.split(conn_a, [WHOLE])
        children = WHOLE.children(cuts)
        on_a = await digests.digests(conn_a, children)
        on_b = await digests.digests(conn_b, children)
        differing = [x.range for x, y in zip(on_a, on_b, strict=True) if x != y]
        assert len(differing) == 1
        rows_a = {r.key: r for r in await digests.rows(conn_a, differing)}
        rows_b = {r.key: r for r in await digests.rows(conn_b, differing)}
        diff = [k for k in rows_a if rows_a[k].digest != rows_b[k].digest]
        assert diff == [(changed,)]
        assert rows_a[diff[0]].version == rows_b[diff[0]].version


async def test_responder_answers_digests_rows_and_reemits_through_the_outbox(
    two_dbs: tuple[AsyncEngine, AsyncEngine], nats_server: NatsServer, unique: str
) -> None:
    engine, _ = two_dbs
    await seed(engine, 20)
    config = BridgeConfig(
        app_name=f"b{unique}", destination_app=f"a{unique}", nats_urls=(nats_server.url,)
    )
    nc = await nats.connect(nats_server.url)
    responder = ReconcileResponder(
        LocalSide(config, nc, engine, (Organization, User), outbox=Outbox(config))
    )
    await responder.start()

    async def ask(body: bytes) -> dict[str, object]:
        msg = await nc.request(config.subjects.reconcile, body, timeout=5)
        result: dict[str, object] = json.loads(msg.data)
        return result

    try:
        users = ModelDigests(User)
        reply = await ask(proto.Request("digests", "user", ranges=(WHOLE,)).encode())
        assert reply["ok"] is True and proto.digests_of(reply, [WHOLE])[0].count == 20
        reply = await ask(proto.Request("split", "user", ranges=(WHOLE,)).encode())
        (cuts,) = proto.splits_of(reply, users, [WHOLE])
        children = WHOLE.children(cuts)
        assert len(children) == 16
        asked = [children[-1], children[0]]  # in the order asked
        reply = await ask(proto.Request("digests", "user", ranges=tuple(asked)).encode())
        ranges = proto.digests_of(reply, asked)
        assert [r.count for r in ranges] == [1, 2]  # 20 rows in 16 parts: 4 of two
        reply = await ask(proto.Request("rows", "user", ranges=(WHOLE,)).encode())
        rows = proto.rows_of(reply, users)
        assert len(rows) == 20 and all(r.origin == "a" for r in rows)
        async with engine.connect() as conn:
            dead = await conn.scalar(
                text("SELECT id FROM users WHERE deleted_at IS NOT NULL LIMIT 1")
            )
            live = await conn.scalar(text("SELECT id FROM users WHERE deleted_at IS NULL LIMIT 1"))
        missing = 9_007_199_254_740_991  # the greatest id: no row has it
        keys = ((dead,), (live,), (missing,))
        reply = await ask(proto.Request("reemit", "user", keys=keys).encode())
        assert reply == {"v": 2, "ok": True, "reemitted": 2}
        async with engine.connect() as conn:
            outbox = (
                await conn.execute(
                    text(
                        f"SELECT resource_id, event_type, subject, {envelope_sql()} AS payload "
                        "FROM bridge_outbox"
                    )
                )
            ).all()
        by_id = {r.resource_id: r for r in outbox}
        assert set(by_id) == {str(dead), str(live)}  # resource_id: the id's text
        assert by_id[str(dead)].event_type == "user.deleted"
        assert by_id[str(live)].event_type == "user.updated"
        assert by_id[str(live)].subject == config.subjects.publish
        assert by_id[str(live)].payload["payload"]["origin"] == "a"  # the stored version, as it is
        assert by_id[str(live)].payload["payload"]["id"] == live  # a JSON integer
        # Bad requests are answered with a code, never left to time out; the detail is
        # in the responder's log only (tests/integration/test_reconcile_limits.py).
        refused = await ask(b'{"v": 2, "op": "rows", "resource": "invoice", "ranges": []}')
        assert refused["ok"] is False and refused["code"] == "unknown_resource"
        assert "invoice" not in json.dumps(refused)
        refused = await ask(b"{broken")
        assert refused["ok"] is False and refused["code"] == "bad_request"
    finally:
        await responder.stop(timeout=5)
        await nc.close()
