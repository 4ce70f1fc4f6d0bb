"""Migration 0013_outbox_body on an outbox with rows: what an earlier relay left pending
is published, after the upgrade, as exactly the envelope it stored; the downgrade
gives the earlier layout back; the start-up check names an outbox not yet migrated."""

from __future__ import annotations

import json

import pytest
from alembic import command
from sqlalchemy import Connection, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bridge.envelope import MSG_ID_HEADER, Envelope
from bridge.errors import SchemaError
from bridge.outbox._store import OutboxStore
from bridge.schema import create_all
from bridge.schema_check import check_schema
from services.shared.db import alembic_config, migrate

BEFORE = "0012_numeric_ids"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
IDS = ["7", '["east", 1]', 'quote"d\\id', "ünï-🙂"]

_OLD_INSERT = text(
    """
    INSERT INTO bridge_outbox (event_id, subject, event_type, resource_type, resource_id,
                               headers, payload)
    VALUES (:event_id, 'sync.a.b', :event_type, :resource_type, :resource_id,
            CAST(:headers AS jsonb), CAST(:payload AS jsonb))
    """
)


def _envelope(resource_id: str) -> Envelope:
    return Envelope(
        event_type="organization.updated",
        producer="system_a",
        resource_type="organization",
        resource_id=resource_id,
        payload={"id": resource_id, "name": 'Ä "b"', "deleted_at": None},
        trace_id="0af7651916cd43dd8448eb211c80319c",
    )


def _downgrade(connection: Connection, url: str, revision: str) -> None:
    config = alembic_config(url)
    config.attributes["connection"] = connection
    command.downgrade(config, revision)


async def _old_rows(engine: AsyncEngine) -> list[tuple[dict[str, object], dict[str, str]]]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT payload, headers FROM bridge_outbox ORDER BY id"))
        return [(dict(r.payload), dict(r.headers)) for r in rows]


async def test_pending_rows_of_the_earlier_layout_publish_the_same_envelopes(
    database_url: str,
) -> None:
    await migrate(database_url, BEFORE)
    envelopes = [_envelope(rid) for rid in IDS]
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            for envelope in envelopes:
                await conn.execute(
                    _OLD_INSERT,
                    {
                        "event_id": envelope.event_id,
                        "event_type": envelope.event_type,
                        "resource_type": envelope.resource_type,
                        "resource_id": envelope.resource_id,
                        "headers": json.dumps(
                            {MSG_ID_HEADER: envelope.event_id, "traceparent": TRACEPARENT}
                        ),
                        "payload": json.dumps(envelope.to_dict()),
                    },
                )
        before = await _old_rows(engine)
        with pytest.raises(SchemaError, match="upgrade_outbox_body"):
            await check_schema(engine, [])  # not migrated yet: named, with the remedy

        await migrate(database_url)
        await check_schema(engine, [])
        await _refuses_a_whole_envelope_in_body(engine)
        store = OutboxStore(engine, owner="test", lease=30.0, max_attempts=3)
        claimed = await store.claim(100)
        assert [Envelope.from_bytes(row.body) for row in claimed] == envelopes
        assert all(row.headers == {"traceparent": TRACEPARENT} for row in claimed)
        await store.release([row.id for row in claimed])

        async with engine.begin() as conn:
            await conn.run_sync(_downgrade, database_url, BEFORE)
        assert await _old_rows(engine) == before
    finally:
        await engine.dispose()


_NEW_INSERT = text(
    """
    INSERT INTO bridge_outbox (event_id, subject, event_type, resource_type, resource_id, body)
    VALUES (:event_id, 'sync.a.b', 'organization.updated', 'organization', '1',
            CAST(:body AS jsonb))
    """
)


async def _refuses_a_whole_envelope_in_body(engine: AsyncEngine) -> None:
    """A row written by hand in the earlier layout (or not an object) fails at once."""
    envelope = _envelope("1")
    for body in (envelope.to_dict(), {"event_type": "x.y"}, [1], "text"):
        with pytest.raises(IntegrityError, match="ck_bridge_outbox_body_layout"):
            async with engine.begin() as conn:
                await conn.execute(
                    _NEW_INSERT, {"event_id": envelope.event_id, "body": json.dumps(body)}
                )


async def test_create_all_refuses_a_whole_envelope_in_body(database_url: str) -> None:
    engine = create_async_engine(database_url)
    try:
        await create_all(engine)
        await _refuses_a_whole_envelope_in_body(engine)
    finally:
        await engine.dispose()
