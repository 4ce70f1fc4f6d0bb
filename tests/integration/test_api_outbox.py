"""API writes with the bridge running: exactly one outbox row per real change, in order,
with the right event type — and none for rejected or no-op requests."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import nats
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from bridge.config import RelayOptions
from bridge.outbox.body import envelope_sql
from bridge.testing import NatsServer
from services.shared.app import create_app
from services.shared.db import migrate
from services.shared.models import Organization
from services.shared.settings import ServiceSettings


@pytest.fixture
async def served(
    database_url: str, nats_server: NatsServer, unique: str
) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    await migrate(database_url)
    settings = ServiceSettings(
        app_name=f"a{unique}",
        destination_app=f"b{unique}",
        database_url=database_url,
        id_system_number=1,
    )
    env = {"NATS_URL": nats_server.url, "STREAM_NAME": f"s{unique}"}
    config = settings.to_bridge_config(env=env, relay=RelayOptions(poll_interval=0.1))
    app = create_app(settings, bridge_config=config)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://a") as client:
            yield client, app


@pytest.fixture
def api(served: tuple[httpx.AsyncClient, FastAPI]) -> httpx.AsyncClient:
    return served[0]


async def outbox_rows(database_url: str) -> list[dict[str, object]]:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            result = await conn.execute(
                text(
                    f"SELECT event_type, resource_id, {envelope_sql()} AS payload, status "
                    "FROM bridge_outbox ORDER BY id"
                )
            )
            return [dict(r) for r in result.mappings()]
    finally:
        await engine.dispose()


async def test_one_event_per_change_and_none_for_rejected_requests(
    api: httpx.AsyncClient, database_url: str, nats_server: NatsServer, unique: str
) -> None:
    org = (await api.post("/organizations", json={"name": "O", "domain": "o.test"})).json()
    assert (
        await api.post("/organizations", json={"name": "X", "domain": "o.test"})
    ).status_code == 422
    assert (await api.patch(f"/organizations/{org['id']}", json={"name": "O"})).status_code == 200
    renamed = await api.patch(f"/organizations/{org['id']}", json={"name": "P"})
    user = (
        await api.post(
            "/users", json={"organization_id": org["id"], "name": "U", "email": "u@o.example.com"}
        )
    ).json()
    assert (await api.delete(f"/organizations/{org['id']}")).status_code == 409
    assert (await api.delete(f"/users/{user['id']}")).status_code == 204
    assert (await api.delete(f"/organizations/{org['id']}")).status_code == 204

    rows = await outbox_rows(database_url)
    # The envelope's resource_id is the id's text; the payload's ids stay JSON integers
    # (what a gem consumer reads: "id": 42, "organization_id": 42).
    org_key, user_key = str(org["id"]), str(user["id"])
    assert [(r["event_type"], r["resource_id"]) for r in rows] == [
        ("organization.created", org_key),
        ("organization.updated", org_key),
        ("user.created", user_key),
        ("user.deleted", user_key),
        ("organization.deleted", org_key),
    ]
    created_user = rows[2]["payload"]
    assert isinstance(created_user, dict)
    assert created_user["payload"]["id"] == user["id"]
    assert created_user["payload"]["organization_id"] == org["id"]
    updated = rows[1]["payload"]
    assert isinstance(updated, dict)
    assert updated["payload"]["name"] == "P"
    assert updated["payload"]["updated_at"] == renamed.json()["updated_at"]
    deleted = rows[4]["payload"]
    assert isinstance(deleted, dict)
    assert deleted["payload"]["deleted_at"] == deleted["payload"]["updated_at"]

    # The relay publishes them as they are, each record's events in order (order across
    # records is not promised: user and organization events may interleave either way).
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        sub = await js.subscribe(f"a{unique}.sync.b{unique}", ordered_consumer=True)
        published = []
        for _ in range(5):
            msg = await sub.next_msg(timeout=10)
            body = json.loads(msg.data)
            published.append((body["event_type"], body["resource_id"]))
        expected = [(r["event_type"], r["resource_id"]) for r in rows]
        assert sorted(published) == sorted(expected)
        for record in (org_key, user_key):
            assert [p for p in published if p[1] == record] == [
                e for e in expected if e[1] == record
            ]
    finally:
        await nc.close()


async def test_a_tombstone_is_captured_as_deleted_by_any_write_path(
    served: tuple[httpx.AsyncClient, FastAPI], database_url: str
) -> None:
    """Capture asks the model for the action: a row turned into a tombstone by a plain
    write in a bridge session (not only by the API's delete) is a ``.deleted`` event,
    and a tombstone created as such (an import, a late create) is one too."""
    api, app = served
    org = (await api.post("/organizations", json={"name": "O", "domain": "t.test"})).json()
    async with app.state.service.session_factory.begin() as session:
        row = await session.get(Organization, org["id"])
        assert row is not None
        row.updated_at = row.deleted_at = datetime.now(UTC)
        session.add(
            Organization(
                name="gone", domain="gone.test", created_at=row.updated_at,
                updated_at=row.updated_at, origin="import", deleted_at=row.updated_at,
            )
        )  # fmt: skip
    rows = await outbox_rows(database_url)
    assert sorted(r["event_type"] for r in rows) == [
        "organization.created",
        "organization.deleted",
        "organization.deleted",
    ]
