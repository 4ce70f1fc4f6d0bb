"""The HTTP API against a real, migrated PostgreSQL database (sync off: API behaviour only).

Validation 422s with field details, the 404 shape, flat and Rails-wrapped bodies,
pagination, duplicate natural keys (also under a race), soft delete, and no 500
for junk input.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from bridge.errors import ConfigError, IdentityError
from bridge.ids import MAX_ID, decode
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
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://a") as client:
            yield client


async def make_org(
    api: httpx.AsyncClient, domain: str = "acme.test", **extra: Any
) -> dict[str, Any]:
    response = await api.post("/organizations", json={"name": "Acme", "domain": domain, **extra})
    assert response.status_code == 201, response.text
    return response.json()


#: organization_id values in a body that are not ids: a 422 naming the field, never a 500.
BAD_BODY_IDS: tuple[Any, ...] = (
    "not-a-number",
    "",
    0,
    -7,
    "-7",
    1.0,
    1.5,
    True,
    "1e3",
    " 42",
    "042",
    MAX_ID + 1,
    str(MAX_ID + 1),
    2**63,
    10**40,
    [1],
    {"id": 1},
    "٣",
)


def fields(response: httpx.Response) -> set[str]:
    body = response.json()
    assert set(body) == {"error", "details"}, body
    assert isinstance(body["error"], str) and body["error"]
    return {d["field"] for d in body["details"]}


async def test_create_flat_and_wrapped_bodies(api: httpx.AsyncClient) -> None:
    flat = await make_org(api, "flat.test")
    wrapped = await api.post(
        "/organizations", json={"organization": {"name": "Wrapped", "domain": "Wrapped.Test"}}
    )
    assert wrapped.status_code == 201, wrapped.text
    body = wrapped.json()
    assert body["domain"] == "wrapped.test"  # natural keys are normalised to lower case
    assert body["origin"] == "system_a" and body["active"] is True
    # Ids are JSON numbers issued by this database's generator, with System A's number.
    assert type(body["id"]) is int and 0 < body["id"] <= MAX_ID
    assert decode(body["id"]).system == 1
    assert body["created_at"] == body["updated_at"]

    user = await api.post(
        "/users",
        json={
            "user": {"organization_id": flat["id"], "name": "Ann", "email": "Ann@Flat.example.com"}
        },
    )
    assert user.status_code == 201, user.text
    assert user.json()["email"] == "ann@flat.example.com"
    assert user.json()["role"] == "member"

    patched = await api.patch(
        f"/organizations/{flat['id']}", json={"organization": {"active": False}}
    )
    assert patched.status_code == 200 and patched.json()["active"] is False
    patched = await api.patch(f"/users/{user.json()['id']}", json={"role": "admin"})
    assert patched.status_code == 200 and patched.json()["role"] == "admin"


async def test_validation_errors_name_the_fields(api: httpx.AsyncClient) -> None:
    org = await make_org(api)
    cases: list[tuple[str, dict[str, Any], set[str]]] = [
        ("/organizations", {}, {"name", "domain"}),
        ("/organizations", {"name": "", "domain": "x.test"}, {"name"}),
        ("/organizations", {"name": "X", "domain": "not a domain"}, {"domain"}),
        ("/organizations", {"name": 123, "domain": "x.test"}, {"name"}),
        ("/organizations", {"name": "X", "domain": "x.test", "active": "yes"}, {"active"}),
        ("/organizations", {"name": "X", "domain": "x.test", "colour": "red"}, {"colour"}),
        ("/organizations", {"organization": {"name": "X"}}, {"domain"}),
        ("/users", {"organization_id": org["id"], "name": "U", "email": "nope"}, {"email"}),
        *(
            (
                "/users",
                {"organization_id": bad, "name": "U", "email": "u@x.example.com"},
                {"organization_id"},
            )
            for bad in BAD_BODY_IDS
        ),
        (
            "/users",
            {
                "organization_id": org["id"],
                "name": "U",
                "email": "u@x.example.com",
                "role": "Chief Of Everything!",
            },
            {"role"},
        ),
        ("/users", {"user": {"name": "U"}}, {"organization_id", "email"}),
    ]
    for path, body, expected in cases:
        response = await api.post(path, json=body)
        assert response.status_code == 422, (path, body, response.text)
        assert fields(response) == expected, (body, response.json())


async def test_missing_organization_and_duplicates_are_422(api: httpx.AsyncClient) -> None:
    org = await make_org(api, "dup.test")
    response = await api.post("/organizations", json={"name": "Again", "domain": "DUP.test"})
    assert response.status_code == 422 and fields(response) == {"domain"}
    assert "taken" in response.json()["details"][0]["message"]

    for ghost in (org["id"] + 8, str(org["id"] + 8), 1):  # well-formed, no such record
        response = await api.post(
            "/users", json={"organization_id": ghost, "name": "U", "email": "u@dup.example.com"}
        )
        assert response.status_code == 422 and fields(response) == {"organization_id"}
        assert response.json()["details"][0]["type"] == "not_found"

    first = await api.post(
        "/users", json={"organization_id": org["id"], "name": "U", "email": "u@dup.example.com"}
    )
    assert first.status_code == 201
    second = await api.post(
        "/users", json={"organization_id": org["id"], "name": "V", "email": "U@dup.example.com"}
    )
    assert second.status_code == 422 and fields(second) == {"email"}

    other = await make_org(api, "other.test")
    response = await api.patch(f"/organizations/{other['id']}", json={"domain": "dup.test"})
    assert response.status_code == 422 and fields(response) == {"domain"}


async def test_concurrent_duplicate_domain_is_one_201_and_422s(api: httpx.AsyncClient) -> None:
    # The pre-check cannot see uncommitted rows; the unique index decides and the race is a 422.
    responses = await asyncio.gather(
        *(
            api.post("/organizations", json={"name": f"R{i}", "domain": "race.test"})
            for i in range(8)
        )
    )
    codes = sorted(r.status_code for r in responses)
    assert codes == [201] + [422] * 7, [r.text for r in responses]
    for response in responses:
        if response.status_code == 422:
            assert fields(response) == {"domain"}


async def test_not_found_shape_and_bad_ids(api: httpx.AsyncClient) -> None:
    org = await make_org(api)
    bad_path_ids = ("0", "-1", "007", "1.0", "1e3", "abc", "%20" + "1", str(MAX_ID + 1), "9" * 40)
    for path in (
        f"/organizations/{org['id'] + 8}",
        f"/users/{org['id']}",  # an organization's id is no user's
        "/users/12345",
        *(f"/organizations/{bad}" for bad in bad_path_ids),
        *(f"/users/{bad}" for bad in bad_path_ids),
    ):
        for method in ("GET", "PATCH", "DELETE"):
            kwargs: dict[str, Any] = {"json": {"name": "x"}} if method == "PATCH" else {}
            response = await api.request(method, path, **kwargs)
            assert response.status_code == 404, (method, path, response.text)
            assert set(response.json()) == {"error"} and "not found" in response.json()["error"]
    response = await api.get("/no/such/route")
    assert response.status_code == 404 and set(response.json()) == {"error"}


async def test_junk_never_500(api: httpx.AsyncClient) -> None:
    org = await make_org(api)
    junk_bodies: list[Any] = [
        None,
        [],
        "text",
        42,
        {"organization": "x"},
        {"organization": []},
        {"name": None, "domain": None},
        {"name": ["a"], "domain": {"b": 1}},
        {"name": "x" * 300, "domain": "a.test"},
    ]
    for body in junk_bodies:
        response = await api.post("/organizations", json=body)
        assert response.status_code == 422, (body, response.text)
    raw = await api.post(
        "/organizations", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert raw.status_code == 422
    for body in ({"name": None}, {"active": 1}, {"domain": 7}, {"id": 42}):
        response = await api.patch(f"/organizations/{org['id']}", json=body)
        assert response.status_code == 422, (body, response.text)
    for query in (
        "limit=0",
        "limit=100000",
        "offset=-1",
        "limit=abc",
        "organization_id=zzz",
        "organization_id=0",
        f"organization_id={MAX_ID + 1}",
        "organization_id=1.5",
    ):
        response = await api.get(f"/users?{query}")
        assert response.status_code == 422, (query, response.text)
    response = await api.post(
        "/organizations", content=b"\xff\xfe", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422


async def test_pagination_and_total(api: httpx.AsyncClient) -> None:
    created = [await make_org(api, f"p{i}.test") for i in range(7)]
    first = (await api.get("/organizations?limit=3")).json()
    assert first["total"] == 7 and first["limit"] == 3 and first["offset"] == 0
    pages = [first["items"]]
    for offset in (3, 6):
        page = (await api.get(f"/organizations?limit=3&offset={offset}")).json()
        assert page["total"] == 7
        pages.append(page["items"])
    ids = [o["id"] for page in pages for o in page]
    assert ids == [o["id"] for o in created]  # stable order (created_at, id), no overlap
    assert (await api.get("/organizations?offset=50")).json()["items"] == []

    org = created[0]
    for i in range(3):
        r = await api.post(
            "/users",
            json={"organization_id": org["id"], "name": f"U{i}", "email": f"u{i}@p.example.com"},
        )
        assert r.status_code == 201
    await api.post(
        "/users",
        json={"organization_id": created[1]["id"], "name": "W", "email": "w@p.example.com"},
    )
    by_org = (await api.get(f"/users?organization_id={org['id']}&limit=2")).json()
    assert by_org["total"] == 3 and len(by_org["items"]) == 2
    assert (await api.get("/users")).json()["total"] == 4


async def test_update_bumps_version_and_noop_does_not(api: httpx.AsyncClient) -> None:
    org = await make_org(api, "ver.test")
    same = (await api.patch(f"/organizations/{org['id']}", json={"name": "Acme"})).json()
    assert same["updated_at"] == org["updated_at"]  # nothing changed: no new version
    versions = [org["updated_at"]]
    for i in range(5):
        body = (await api.patch(f"/organizations/{org['id']}", json={"name": f"N{i}"})).json()
        versions.append(body["updated_at"])
    assert versions == sorted(versions) and len(set(versions)) == len(versions)


async def test_soft_delete_hides_and_frees_natural_key(
    api: httpx.AsyncClient, database_url: str
) -> None:
    org = await make_org(api, "gone.test")
    user = (
        await api.post(
            "/users",
            json={"organization_id": org["id"], "name": "U", "email": "u@gone.example.com"},
        )
    ).json()
    blocked = await api.delete(f"/organizations/{org['id']}")
    assert blocked.status_code == 409 and "user" in blocked.json()["error"]
    assert (await api.delete(f"/users/{user['id']}")).status_code == 204
    assert (await api.delete(f"/organizations/{org['id']}")).status_code == 204
    assert (await api.get(f"/organizations/{org['id']}")).status_code == 404
    assert (await api.get("/organizations")).json()["total"] == 0
    assert (await api.delete(f"/organizations/{org['id']}")).status_code == 404
    again = await make_org(api, "gone.test")  # the tombstone no longer holds the domain
    assert again["id"] != org["id"]
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    text("SELECT deleted_at, updated_at FROM organizations WHERE id = :id"),
                    {"id": org["id"]},
                )
            ).one()
    finally:
        await engine.dispose()
    assert row.deleted_at is not None and row.deleted_at == row.updated_at


async def test_health_and_sync_status_without_sync(api: httpx.AsyncClient) -> None:
    health = await api.get("/health")
    assert health.status_code == 200
    assert health.json()["database"]["connected"] is True
    await make_org(api)
    status = (await api.get("/sync_status")).json()
    assert status["organizations_count"] == 1 and status["users_count"] == 0
    assert status["jetstream_connected"] is False and status["sync_enabled"] is False
    for key in (
        "inbox_events_count",
        "processed_events_count",
        "failed_events_count",
        "conflicts",
        "stale_events",
    ):
        assert status[key] == 0
    assert status["last_organization_sync"] is None


async def test_openapi_docs(api: httpx.AsyncClient) -> None:
    assert (await api.get("/docs")).status_code == 200
    spec = (await api.get("/openapi.json")).json()
    assert {
        "/organizations",
        "/organizations/{org_id}",
        "/users",
        "/users/{user_id}",
        "/health",
        "/sync_status",
    } <= set(spec["paths"])


async def test_ids_are_json_numbers_and_numeric_strings_are_the_same_id(
    api: httpx.AsyncClient,
) -> None:
    org = await make_org(api, "numbers.test")
    as_number = await api.post(
        "/users",
        json={
            "user": {"organization_id": org["id"], "name": "N", "email": "n@numbers.example.com"}
        },
    )
    as_text = await api.post(
        "/users",
        json={"organization_id": str(org["id"]), "name": "T", "email": "t@numbers.example.com"},
    )
    assert as_number.status_code == 201 and as_text.status_code == 201, as_text.text
    for created in (as_number.json(), as_text.json()):
        assert created["organization_id"] == org["id"]
        assert type(created["id"]) is int
    assert as_text.json()["id"] > as_number.json()["id"]  # time-ordered
    listed = await api.get(f"/users?organization_id={org['id']}")
    assert [u["id"] for u in listed.json()["items"]] == [
        as_number.json()["id"],
        as_text.json()["id"],
    ]
    moved = await api.patch(
        f"/users/{as_text.json()['id']}", json={"organization_id": str(org["id"])}
    )
    assert moved.status_code == 200 and moved.json()["updated_at"] == as_text.json()["updated_at"]


def _settings(url: str, **over: Any) -> ServiceSettings:
    values: dict[str, Any] = {
        "app_name": "system_a",
        "destination_app": "system_b",
        "database_url": url,
        "sync_enabled": False,
        **over,
    }
    return ServiceSettings(**values)


async def _start(settings: ServiceSettings) -> None:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        pass


async def test_start_up_sets_the_system_number_and_refuses_a_clash(database_url: str) -> None:
    await migrate(database_url)
    await _start(_settings(database_url))  # System A's default: 1
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            number = await conn.scalar(text("SELECT system_number FROM bridge_id_settings"))
        assert number == 1
        # B's settings pointed at A's database: a clash, refused before any write.
        with pytest.raises(ConfigError, match=r"system number 1.*ID_SYSTEM_NUMBER=2"):
            await _start(_settings(database_url, app_name="system_b", destination_app="system_a"))
        with pytest.raises(ConfigError, match="ID_SYSTEM_NUMBER=5"):
            await _start(_settings(database_url, id_system_number=5))
        async with engine.connect() as conn:
            assert await conn.scalar(text("SELECT system_number FROM bridge_id_settings")) == 1
    finally:
        await engine.dispose()
    await _start(_settings(database_url, id_system_number=1))  # the same number: fine


async def test_start_up_without_a_number_or_generator_is_a_clear_error(database_url: str) -> None:
    # An app that is not one of the examples must say its number.
    with pytest.raises(ConfigError, match="ID_SYSTEM_NUMBER is not set for app 'billing'"):
        await _start(_settings(database_url, app_name="billing"))
    # Migrations not run: the generator is missing.
    with pytest.raises(IdentityError, match="not installed") as caught:
        await _start(_settings(database_url))
    assert caught.value.code == "not_installed"
    with pytest.raises(ValueError):
        _settings(database_url, id_system_number=64)
