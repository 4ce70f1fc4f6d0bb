"""One service app under fuzzing: its real lifespan, its database, and the write invariants.

:class:`FuzzedService` runs System A's or System B's app (``build_app`` of its entry
point) with sync on — the bridge started, outbox capture in every write — on a
migrated database of its own, inside an event loop of its own (an anyio blocking
portal thread).  Tests are synchronous (Hypothesis and schemathesis drive them); every
request and every database read goes through :meth:`FuzzedService.run` on that loop,
so the app's engine, the NATS connection and the checks share one loop.

:meth:`FuzzedService.send` sends one schemathesis ``Case`` through httpx's ASGI
transport and then checks, against the database before and after:

- never a 5xx; every 4xx is JSON with ``error`` (and ``details`` for a 422);
- the response conforms to the OpenAPI schema (schemathesis checks);
- no partial writes: a rejected request (any 4xx) and any read change neither the
  domain tables nor the outbox; an accepted write changes exactly the record it names
  (the stored row equals the response) and adds exactly one outbox row for it
  (``<resource>.created`` / ``.updated`` / ``.deleted`` with the stored row as payload),
  or none for a PATCH that changed nothing.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import schemathesis
from anyio.from_thread import BlockingPortal, start_blocking_portal
from fastapi import FastAPI
from schemathesis.checks import CHECKS as ALL_CHECKS
from schemathesis.checks import CheckFunction, load_all_checks
from schemathesis.generation.case import Case
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bridge import BridgeConfig
from bridge.ids import parse_id
from bridge.outbox.body import envelope_sql
from services.shared.db import migrate
from services.shared.models import Organization, User
from services.shared.schemas import OrganizationOut, UserOut
from services.shared.settings import ServiceSettings

T = TypeVar("T")


#: Schemathesis' response checks that need no second request.
def response_checks() -> list[CheckFunction]:
    load_all_checks()
    return list(
        ALL_CHECKS.get_by_names(
            [
                "not_a_server_error",
                "status_code_conformance",
                "content_type_conformance",
                "response_headers_conformance",
                "response_schema_conformance",
            ]
        )
    )


#: Operations the fuzzer drives (``/metrics`` is Prometheus text, ``/health`` a probe).
FUZZED_PATHS = ("/organizations", "/organizations/{org_id}", "/users", "/users/{user_id}")

RESOURCES: dict[str, tuple[type[Organization] | type[User], type[OrganizationOut | UserOut]]] = {
    "organization": (Organization, OrganizationOut),
    "user": (User, UserOut),
}


@dataclass(frozen=True)
class Snapshot:
    """The domain tables (every row, tombstones included, as JSON) and the outbox's top id."""

    rows: dict[str, dict[str, Any]]  # "<resource>:<id>" -> row as the API renders it (+deleted)
    outbox_top: int


def _settings_class(service: str) -> type[ServiceSettings]:
    if service == "system_a":
        from services.system_a.main import SystemASettings

        return SystemASettings
    from services.system_b.main import SystemBSettings

    return SystemBSettings


def _build_app(service: str, settings: ServiceSettings, config: BridgeConfig) -> FastAPI:
    if service == "system_a":
        from services.system_a.main import build_app
    else:
        from services.system_b.main import build_app
    return build_app(settings, bridge_config=config)


class FuzzedService:
    """A running service app plus the schema, the client and the invariants (see module doc)."""

    def __init__(self, portal: BlockingPortal, app: FastAPI, engine: AsyncEngine) -> None:
        self._portal = portal
        self.app = app
        self._engine = engine
        self._client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        )
        self.schema = schemathesis.openapi.from_dict(app.openapi())
        self._checks = response_checks()
        self.calls = 0
        self.statuses: Counter[int] = Counter()
        self.outcomes: Counter[tuple[str, str, int]] = Counter()  # (method, path, status)

    @classmethod
    @contextmanager
    def running(
        cls, service: str, database_url: str, nats_url: str, unique: str
    ) -> Iterator[FuzzedService]:
        settings = _settings_class(service)(
            app_name=f"{service}_{unique}",
            destination_app=f"peer_{unique}",
            database_url=database_url,
        )
        env = {"NATS_URL": nats_url, "STREAM_NAME": f"fuzz-{unique}"}
        app = _build_app(service, settings, settings.to_bridge_config(env=env))
        with ExitStack() as stack:
            portal = stack.enter_context(start_blocking_portal())
            portal.call(migrate, database_url)
            stack.enter_context(portal.wrap_async_context_manager(app.router.lifespan_context(app)))
            engine = create_async_engine(database_url)
            stack.callback(portal.call, engine.dispose)
            service_ = cls(portal, app, engine)
            stack.callback(portal.call, service_._client.aclose)
            yield service_

    def run(self, fn: Callable[[], Awaitable[T]]) -> T:
        return self._portal.call(fn)

    # -- the database -----------------------------------------------------------------
    async def _snapshot(self) -> Snapshot:
        rows: dict[str, dict[str, Any]] = {}
        async with self._engine.connect() as conn:
            for resource, (model, out) in RESOURCES.items():
                # In creation order, not id order: ids are random, and a draw that picks
                # "the n-th live record" must pick the same one in every run.
                query = select(model.__table__).order_by(model.created_at, model.id)
                for row in (await conn.execute(query)).mappings():
                    rendered = out.model_validate(dict(row)).model_dump(mode="json")
                    rendered["deleted"] = row["deleted_at"] is not None
                    rows[f"{resource}:{row['id']}"] = rendered
            top = await conn.scalar(text("SELECT coalesce(max(id), 0) FROM bridge_outbox"))
        return Snapshot(rows=rows, outbox_top=int(top or 0))

    async def _outbox_after(self, top: int) -> list[dict[str, Any]]:
        async with self._engine.connect() as conn:
            result = await conn.execute(
                text(
                    f"SELECT event_type, resource_type, resource_id, {envelope_sql()} AS payload "
                    "FROM bridge_outbox"
                    " WHERE id > :top ORDER BY id"
                ),
                {"top": top},
            )
            return [dict(r) for r in result.mappings()]

    def reset(self) -> None:
        """Empty the domain tables (one state machine scenario must not depend on the last)."""

        async def reset() -> None:
            async with self._engine.begin() as conn:
                await conn.execute(text("DELETE FROM users"))
                await conn.execute(text("DELETE FROM organizations"))

        self.run(reset)

    def live_ids(self, resource: str) -> list[str]:
        """Ids of live records of ``resource``, oldest first (for ids that hit something)."""
        snapshot = self.run(self._snapshot)
        return [
            key.split(":", 1)[1]
            for key, row in snapshot.rows.items()
            if key.startswith(f"{resource}:") and not row["deleted"]
        ]

    # -- one request ------------------------------------------------------------------
    def send(self, case: Case) -> httpx.Response:
        """Send ``case``, validate the response and the writes (module doc); return it."""
        # The checks run here, not on the portal's loop: schemathesis reports failures as a
        # BaseExceptionGroup, which would stop the portal instead of reaching the test.
        response, before, after, new_outbox = self.run(lambda: self._send(case))
        self.calls += 1
        self.statuses[response.status_code] += 1
        self.outcomes[(case.method.upper(), case.path, response.status_code)] += 1
        case.validate_response(response, checks=self._checks)
        _check_error_body(case, response)
        _check_writes(case, response, before, after, new_outbox)
        return response

    async def _send(
        self, case: Case
    ) -> tuple[httpx.Response, Snapshot, Snapshot, list[dict[str, Any]]]:
        before = await self._snapshot()
        kwargs = case.as_transport_kwargs(base_url="http://testserver")
        request = self._client.build_request(
            kwargs["method"],
            kwargs["url"],
            params=kwargs.get("params"),
            headers=kwargs.get("headers"),
            content=_body_bytes(kwargs),
        )
        response = await self._client.send(request)
        await response.aread()
        after = await self._snapshot()
        return response, before, after, await self._outbox_after(before.outbox_top)


def _body_bytes(kwargs: dict[str, Any]) -> bytes | None:
    if "json" in kwargs:
        return json.dumps(kwargs["json"]).encode()
    data = kwargs.get("data", kwargs.get("content"))
    if data is None:
        return None
    return data.encode() if isinstance(data, str) else bytes(data)


def _describe(case: Case, response: httpx.Response) -> str:
    return (
        f"{case.method} {case.formatted_path} query={case.query!r} body={case.body!r}"
        f" -> {response.status_code} {response.text[:500]}"
    )


def _check_error_body(case: Case, response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    assert response.headers.get("content-type", "").startswith("application/json"), _describe(
        case, response
    )
    body = response.json()
    assert isinstance(body, dict), _describe(case, response)
    assert isinstance(body.get("error"), str), _describe(case, response)
    assert body["error"], _describe(case, response)
    if response.status_code == 422:
        details = body.get("details")
        assert isinstance(details, list), _describe(case, response)
        assert details, _describe(case, response)
        for detail in details:
            assert isinstance(detail.get("field"), str), _describe(case, response)
            assert isinstance(detail.get("message"), str), _describe(case, response)


def _resource_of(path: str) -> str:
    return "organization" if path.startswith("/organizations") else "user"


def _check_writes(
    case: Case,
    response: httpx.Response,
    before: Snapshot,
    after: Snapshot,
    new_outbox: list[dict[str, Any]],
) -> None:
    where = _describe(case, response)
    method = case.method.upper()
    status = response.status_code
    if method == "GET" or status >= 400:
        assert after.rows == before.rows, f"rows changed by a read or a rejected request: {where}"
        assert new_outbox == [], f"outbox rows for a read or a rejected request: {where}"
        return
    resource = _resource_of(case.path)
    if method == "DELETE":
        assert status == 204, where
        record_id = str(case.path_parameters["org_id" if resource == "organization" else "user_id"])
        key = f"{resource}:{parse_id(record_id)}"  # a 204 had a canonical id
        assert before.rows[key]["deleted"] is False, where
        assert after.rows[key]["deleted"] is True, where
        expected_type = f"{resource}.deleted"
    else:
        body = response.json()
        key = f"{resource}:{body['id']}"
        stored = dict(after.rows[key])
        assert stored.pop("deleted") is False, where
        assert stored == body, f"stored row differs from the response: {stored} vs {where}"
        if method == "POST":
            assert status == 201, where
            assert key not in before.rows, where
            expected_type = f"{resource}.created"
        else:
            assert status == 200, where
            if before.rows[key] == after.rows[key]:
                # A PATCH with the current values: a no-op, no new version, no event.
                assert after.rows == before.rows, where
                assert new_outbox == [], f"outbox row for a no-op PATCH: {where}"
                return
            expected_type = f"{resource}.updated"
    # Exactly the named record changed ...
    changed = {
        k for k in set(before.rows) | set(after.rows) if before.rows.get(k) != after.rows.get(k)
    }
    assert changed == {key}, f"records changed besides {key}: {changed - {key}}: {where}"
    # ... and exactly one outbox row says so, with the stored row as its payload.
    assert len(new_outbox) == 1, f"{len(new_outbox)} outbox rows for one change: {where}"
    event = new_outbox[0]
    assert event["event_type"] == expected_type, where
    assert event["resource_type"] == resource, where
    assert f"{resource}:{event['resource_id']}" == key, where
    payload = event["payload"]["payload"]
    stored_now = after.rows[key]
    for field, value in stored_now.items():
        if field != "deleted":
            assert payload[field] == value, f"outbox payload {field}={payload[field]!r}: {where}"
    assert (payload.get("deleted_at") is not None) == stored_now["deleted"], where
