"""Local writes on a record whose stored version is from the future never overflow.

A version far ahead of this side's clock cannot come in through the consumer any more
(dead letter ``future_version``), but one stored before that rule, or written by SQL,
must not turn every later write of the record into a 500 (``OverflowError`` computing
``updated_at + 1 µs`` from 9999-12-31T23:59:59.999999Z).  Such a write is refused with a
409 that names the record and what to do; a version only slightly ahead (within
``max_clock_skew``) is still written over, strictly after it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from bridge.envelope import format_timestamp, parse_timestamp, utcnow
from services.shared.app import create_app
from services.shared.db import migrate
from services.shared.settings import ServiceSettings


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    await migrate(database_url)
    settings = ServiceSettings(
        app_name="system_a",
        destination_app="system_b",
        database_url=database_url,
        sync_enabled=False,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://a") as client:
            yield client


async def set_version(database_url: str, table: str, record_id: int, at: str) -> None:
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:  # a hand edit: not a change to publish
            await conn.execute(text("SET LOCAL bridge.capture = 'off'"))
            await conn.execute(
                text(f"UPDATE {table} SET updated_at = :at WHERE id = :id"),
                {"at": parse_timestamp(at), "id": record_id},
            )
    finally:
        await engine.dispose()


async def create(api: httpx.AsyncClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await api.post(path, json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def test_writes_on_a_far_future_version_are_a_409_not_a_500(
    api: httpx.AsyncClient, database_url: str
) -> None:
    org = await create(api, "/organizations", {"name": "Acme", "domain": "acme.test"})
    user = await create(
        api, "/users", {"organization_id": org["id"], "name": "Ann", "email": "ann@example.com"}
    )
    # datetime.max is stored as 'infinity' (and read back naive): both spellings of "far"
    far, later = "9999-12-31T23:59:59.999999Z", "3000-01-01T00:00:00.000000Z"
    await set_version(database_url, "organizations", org["id"], far)
    await set_version(database_url, "users", user["id"], later)

    for method, path in (
        ("PATCH", f"/organizations/{org['id']}"),
        ("PATCH", f"/users/{user['id']}"),
        ("DELETE", f"/users/{user['id']}"),
    ):
        response = await api.request(
            method, path, json={"name": "New"} if method == "PATCH" else None
        )
        assert response.status_code == 409, (method, path, response.status_code, response.text)
        error = response.json()["error"]
        record_id = path.rsplit("/", 1)[-1]
        assert record_id in error and (far if "organizations" in path else later) in error
        assert "reconcil" in error or "backfill" in error  # says how to repair it
    # Nothing was written: the stored rows are as they were.
    got = (await api.get(f"/organizations/{org['id']}")).json()
    assert (got["name"], got["updated_at"]) == ("Acme", far)
    # Other records are unaffected.
    other = await create(api, "/organizations", {"name": "Other", "domain": "other.test"})
    patched = await api.patch(f"/organizations/{other['id']}", json={"name": "Fine"})
    assert patched.status_code == 200, patched.text


async def test_a_version_slightly_ahead_is_written_over_strictly_after_it(
    api: httpx.AsyncClient, database_url: str
) -> None:
    org = await create(api, "/organizations", {"name": "Acme", "domain": "acme.test"})
    ahead = format_timestamp(utcnow() + timedelta(minutes=2))  # within the 5 min default
    await set_version(database_url, "organizations", org["id"], ahead)
    patched = await api.patch(f"/organizations/{org['id']}", json={"name": "Later"})
    assert patched.status_code == 200, patched.text
    assert patched.json()["updated_at"] > ahead  # never loses to the version it replaced
