"""Backfill and reconciliation on every key type — bigint, text, composite (bigint,
text) and UUID — with 10,000 rows per side, real PostgreSQL and NATS.

Identical sides cost one ``digests`` request per model (checksums only, no row);
differing, missing and deleted rows are re-emitted exactly, by the side that holds
the newer version, with ``resource_id`` by the key's rule; keys at the types'
boundaries (the least and greatest bigint, negatives, the empty string, text whose
byte order differs from collations') travel both ways; hostile keys are refused.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from keyed_models import MODELS, RESOURCE_ID_SQL, Base, LineItem, seed_sql
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bridge import schema
from bridge.config import BridgeConfig
from bridge.outbox.capture import Outbox, Synced
from bridge.reconcile import _protocol as proto
from bridge.reconcile._digest import LocalSide
from bridge.reconcile.backfill import STATUS_COMPLETED, STATUS_STOPPED, Backfill, BackfillOptions
from bridge.reconcile.reconciler import Reconciler
from bridge.reconcile.responder import ReconcileResponder
from bridge.testing import NatsServer, PostgresServer

ROWS = 10_000

_NOT_CAPTURED = text("SET LOCAL bridge.capture = 'off'")


@pytest.fixture
async def two_dbs(postgres: PostgresServer) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine]]:
    engines = []
    for _ in range(2):
        url = await postgres.create_database()
        engine = create_async_engine(url)
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        await schema.create_all(engine, models=MODELS)  # + their capture triggers
        engines.append((url, engine))
    try:
        yield engines[0][1], engines[1][1]
    finally:
        for url, engine in engines:
            await engine.dispose()
            await postgres.drop_database(url)


async def seed(engine: AsyncEngine, model: type[Synced], n: int = ROWS, origin: str = "a") -> None:
    async with engine.begin() as conn:
        await conn.execute(_NOT_CAPTURED)  # data as it was before sync, or a hand edit
        await conn.execute(text(seed_sql(model.__tablename__)), {"n": n, "origin": origin})  # type: ignore[attr-defined]


async def outbox_ids(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return list((await conn.scalars(text("SELECT resource_id FROM bridge_outbox"))).all())


async def rule_ids(engine: AsyncEngine, table: str, where: str = "true") -> set[str]:
    async with engine.connect() as conn:
        query = f"SELECT {RESOURCE_ID_SQL[table]} FROM {table} WHERE {where}"
        return set((await conn.scalars(text(query))).all())


async def change(engine: AsyncEngine, sql: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(_NOT_CAPTURED)
        await conn.execute(text(sql))


def pair(nats_url: str, unique: str) -> tuple[BridgeConfig, BridgeConfig]:
    a = BridgeConfig(app_name=f"a{unique}", destination_app=f"b{unique}", nats_urls=(nats_url,))
    b = BridgeConfig(app_name=f"b{unique}", destination_app=f"a{unique}", nats_urls=(nats_url,))
    return a, b


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__tablename__)
async def test_backfill_keysets_on_any_key_and_resumes(
    two_dbs: tuple[AsyncEngine, AsyncEngine], model: type[Synced], unique: str
) -> None:
    engine, _ = two_dbs
    table = model.__tablename__  # type: ignore[attr-defined]
    await seed(engine, model)
    config = BridgeConfig(app_name=f"a{unique}", destination_app=f"b{unique}")
    options = BackfillOptions(batch_size=997, max_pending=None)
    stopper: Backfill | None = None

    def stop_after_three(progress: Any) -> None:
        if progress.done >= 3 * 997 and stopper is not None:
            stopper.request_stop()

    stopper = Backfill(engine, Outbox(config), [model], options)
    first = await stopper.run(stop_after_three)
    assert first.status == STATUS_STOPPED and first.emitted == 3 * 997
    second = await Backfill(engine, Outbox(config), [model], options).run()  # resumes
    assert second.status == STATUS_COMPLETED and first.emitted + second.emitted == ROWS
    emitted = await outbox_ids(engine)
    # Every row exactly once, under the resource_id of the key's rule.
    assert len(emitted) == ROWS and set(emitted) == await rule_ids(engine, table)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__tablename__)
async def test_reconciliation_on_any_key(
    two_dbs: tuple[AsyncEngine, AsyncEngine],
    nats_server: NatsServer,
    unique: str,
    model: type[Synced],
) -> None:
    a, b = two_dbs
    table = model.__tablename__  # type: ignore[attr-defined]
    config_a, config_b = pair(nats_server.url, unique)
    await seed(a, model, origin=config_a.app_name)
    await seed(b, model, origin=config_a.app_name)
    nc = await nats.connect(nats_server.url)
    responder = ReconcileResponder(LocalSide(config_b, nc, b, [model], outbox=Outbox(config_b)))
    await responder.start()
    reconciler = Reconciler(LocalSide(config_a, nc, a, [model], outbox=Outbox(config_a)))
    try:
        same = await reconciler.run()
        # Identical: one digests request, checksums only — not a row crossed.
        assert same.error is None and same.rows_repaired == 0 and same.rows_compared == 0
        assert same.requests == 1 and same.bytes_transferred < 300, same.bytes_transferred
        print(f"{table}: identical sides of {ROWS} rows, {same.bytes_transferred} bytes")

        # A few differences, both directions, at the key type's boundaries: rows 1-2
        # newer on B; rows 3-4 newer on A; row 5 deleted on A (B has it); row 6
        # deleted on B; row 7 only on B; row 8 edited on B by hand (same version,
        # origin a: A's copy wins).
        rid = RESOURCE_ID_SQL[table]
        async with a.connect() as conn:
            first = (
                await conn.scalars(text(f"SELECT {rid} FROM {table} ORDER BY updated_at LIMIT 8"))
            ).all()
        keys = {i: f"{rid} = '{first[i - 1].replace(chr(39), chr(39) * 2)}'" for i in range(1, 9)}
        newer = "updated_at = updated_at + interval '1 day'"
        expected_to_peer = {first[2], first[3], first[5], first[7]}
        expected_from_peer = {first[0], first[1], first[4]}
        by_b = f"{newer}, origin = '{config_b.app_name}'"
        await change(b, f"UPDATE {table} SET {by_b} WHERE {keys[1]} OR {keys[2]}")
        await change(a, f"UPDATE {table} SET {newer} WHERE {keys[3]} OR {keys[4]}")
        await change(a, f"DELETE FROM {table} WHERE {keys[5]}")
        await change(b, f"DELETE FROM {table} WHERE {keys[6]}")
        await change(b, f"UPDATE {table} SET name = 'by hand' WHERE {keys[8]}")
        async with b.begin() as conn:  # a row only B has: its key past every other
            await conn.execute(_NOT_CAPTURED)
            await conn.execute(text(seed_sql(table).replace("'item '", "'only b '").replace(
                "generate_series(1, :n)", "generate_series(:n + 1, :n + 1)")),
                {"n": ROWS + 7, "origin": config_b.app_name})  # fmt: skip
        only_b = await rule_ids(b, table, "name LIKE 'only b%'")
        assert len(only_b) == 1
        expected_from_peer |= only_b

        report = await reconciler.run()
        assert report.error is None
        assert (report.repaired_to_peer, report.repaired_from_peer) == (4, 4)
        assert set(await outbox_ids(a)) == expected_to_peer
        assert set(await outbox_ids(b)) == expected_from_peer
        assert report.rows_compared < 2_000  # the leaves around 8 keys, not the table
        print(f"{table}: 8 differing rows, {report.requests} requests, "
              f"{report.bytes_transferred} bytes")  # fmt: skip
    finally:
        await responder.stop(timeout=10)
        await nc.close()


async def test_hostile_keys_are_refused_for_the_resource_key(
    two_dbs: tuple[AsyncEngine, AsyncEngine], nats_server: NatsServer, unique: str
) -> None:
    _, engine = two_dbs
    for model in MODELS:
        await seed(engine, model, 100)
    _, config = pair(nats_server.url, unique)
    nc = await nats.connect(nats_server.url)
    responder = ReconcileResponder(LocalSide(config, nc, engine, MODELS, outbox=Outbox(config)))

    async def answer(op: str, resource: str, **fields: Any) -> dict[str, Any]:
        body = json.dumps({"v": 2, "op": op, "resource": resource, **fields}).encode()
        reply: dict[str, Any] = json.loads(await responder.answer(body))
        return reply

    try:
        for resource, keys in (
            ("int_item", [["1"]]),  # text for an integer
            ("int_item", [[1.0]]),
            ("int_item", [[True]]),
            ("int_item", [[1, 2]]),  # two parts for one
            ("text_item", [[1]]),  # a number for text
            ("text_item", [["a\x00b"]]),  # NUL: PostgreSQL text cannot hold it
            ("text_item", [["\ud800"]]),  # a lone surrogate: not Unicode text
            ("text_item", [["x" * 256]]),
            ("line_item", [[1]]),  # one part for two
            ("line_item", [["1", 1]]),  # parts swapped
            ("uuid_item", [["not-a-uuid"]]),
            ("uuid_item", [[0]]),
        ):
            reply = await answer("reemit", resource, keys=keys)
            assert (reply["ok"], reply["code"]) == (False, "bad_request"), (resource, keys)
            reply = await answer("rows", resource, ranges=[[keys[0], None]])
            assert (reply["ok"], reply["code"]) == (False, "bad_request"), (resource, keys)
        # Ranges checked in the key's own order: "é" > "a" > "Z" (COLLATE "C").
        inverted = await answer("digests", "text_item", ranges=[[["é"], ["a"]]])
        assert inverted["code"] == "bad_request"
        overlapping = await answer(
            "digests", "line_item", ranges=[[[1, "b"], None], [None, [2, ""]]]
        )
        assert overlapping["code"] == "bad_request"
        # Still served: a well-formed request on each key type.
        for model in MODELS:
            reply = await answer("digests", model.__bridge_resource__, ranges=[[None, None]])
            assert reply["ok"] is True and reply["ranges"][0][0] == 100
        reply = await answer("reemit", "line_item", keys=[[9223372036854775807, "l1ü"]])
        assert reply["reemitted"] == 1
        async with engine.connect() as conn:
            rid = await conn.scalar(text("SELECT resource_id FROM bridge_outbox"))
        assert rid == '[9223372036854775807, "l1ü"]'
    finally:
        await nc.close()
    assert LineItem.__bridge_reconcile__ is True
    assert proto.PROTOCOL_VERSION == 2
