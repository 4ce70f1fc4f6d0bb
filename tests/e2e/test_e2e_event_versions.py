"""Versioned events between the two real services (issue #8's "must show").

1. A v1 event (the Ruby gem's row: integer ``id`` / ``organization_id``, no ``origin``,
   no ``deleted_at``) is applied through the v1 → v2 upcaster — published to each
   side, read back through both APIs; an API write on A goes out as v2 (the new fields,
   integer ids under the gem's field names, what a gem consumer reads) and is applied
   as is.
2. A v3 event is dead-lettered by B with reason ``unsupported_schema_version`` (B keeps
   processing later events); B restarted knowing v3 applies it after
   ``bridge dlq replay``.
"""

from __future__ import annotations

import io
import itertools
import json
import uuid
from collections.abc import Mapping
from contextlib import AsyncExitStack
from typing import Any

import httpx
import nats
from e2e_support import Pair, Side, eventually, new_database, start_side
from nats.js import JetStreamContext
from sqlalchemy.ext.asyncio import create_async_engine

from bridge.cli import EXIT_OK, main_async
from bridge.envelope import MSG_ID_HEADER, Envelope, format_timestamp, utcnow
from bridge.event_schemas import EventSchemas
from bridge.ids import compose
from bridge.schema import create_all
from bridge.testing import NatsServer, PostgresServer
from services.shared.event_versions import OrganizationV2, PayloadModel, event_schemas
from services.shared.models import Organization, User

#: Ids of the gem's app: integers (system 9 of the scheme, so no test run repeats one).
_GEM_IDS = itertools.count(compose(utcnow(), 0, 9), 64)
#: The fields of the gem's rows (seed/examples-README.md), what a gem consumer reads.
GEM_ORGANIZATION_FIELDS = {"id", "name", "domain", "active", "created_at", "updated_at"}
GEM_USER_FIELDS = {"id", "organization_id", "name", "email", "role", "active", "created_at",
                   "updated_at"}  # fmt: skip


def gem_organization(**overrides: Any) -> dict[str, Any]:
    """An organization row as the Ruby gem publishes it (schema v1): integer id."""
    now = format_timestamp(utcnow())
    row = {"id": next(_GEM_IDS), "name": "Gem Co", "active": True}
    return {**row, "domain": f"g{row['id']}.gem.test", "created_at": now, "updated_at": now,
            **overrides}  # fmt: skip


async def publish_as(
    js: JetStreamContext,
    producer: Side,
    resource: str,
    payload: Mapping[str, Any],
    version: int,
    action: str = "created",
) -> Envelope:
    """Publish ``payload`` on ``producer``'s subject as a ``version`` event (another app's)."""
    envelope = Envelope(
        event_type=f"{resource}.{action}",
        producer=producer.config.app_name,
        resource_type=resource,
        resource_id=str(payload["id"]),
        payload=payload,
        schema_version=version,
    )
    body = envelope.to_dict()
    del body["origin"], body["causation_id"]  # the gem sends neither
    await js.publish(
        producer.config.subjects.publish,
        json.dumps(body).encode(),
        headers={MSG_ID_HEADER: envelope.event_id},
    )
    return envelope


async def row(side: Side, table: str, record_id: int) -> dict[str, Any] | None:
    rows = [r for r in await side.rows(table) if r["id"] == record_id]
    return rows[0] if rows else None


def sample(side: Side, name: str, **labels: str) -> float:
    assert side.state.bridge is not None
    return side.state.bridge.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_gem_v1_event_is_upcast_and_our_v2_event_applies(pair: Pair) -> None:
    a, b = pair.a, pair.b
    org = gem_organization()
    user = {"id": next(_GEM_IDS), "organization_id": org["id"], "name": "Ann",
            "email": f"ann@{org['domain']}", "role": "admin", "active": True,
            "created_at": org["created_at"], "updated_at": org["updated_at"]}  # fmt: skip
    assert set(org) == GEM_ORGANIZATION_FIELDS and set(user) == GEM_USER_FIELDS
    # The gem's app feeds both systems: its events on each side's inbound subject, as
    # JSON with bare integer ids.
    for producer in (a, b):
        await publish_as(pair.js, producer, "organization", org, version=1)
        await publish_as(pair.js, producer, "user", user, version=1)

    async def applied() -> dict[str, Any] | None:
        return await row(b, "users", user["id"])

    stored_user = await eventually(applied, what="gem user on B")
    # Read back through both APIs, by the gem's integer ids.
    for side in (a, b):

        async def through_api(side: Side = side) -> tuple[Any, Any] | None:
            got_org = await side.get(f"/organizations/{org['id']}")
            got_user = await side.get(f"/users/{user['id']}")
            if got_org.status_code != 200 or got_user.status_code != 200:
                return None
            return got_org.json(), got_user.json()

        api_org, api_user = await eventually(through_api, what=f"gem rows on {side.name}")
        assert {k: api_org[k] for k in GEM_ORGANIZATION_FIELDS} == org
        assert {k: api_user[k] for k in GEM_USER_FIELDS} == {
            **user,
            "created_at": api_user["created_at"],
            "updated_at": api_user["updated_at"],
        }
        assert api_user["organization_id"] == org["id"] and type(api_user["id"]) is int
    stored_org = await row(b, "organizations", org["id"])
    assert stored_org is not None
    assert (stored_org["name"], stored_org["domain"], stored_org["active"]) == (
        "Gem Co", org["domain"], True,
    )  # fmt: skip
    # the upcaster's v2 fields: origin from the envelope, no tombstone
    assert stored_org["origin"] == a.config.app_name and stored_org["deleted_at"] is None
    assert format_timestamp(stored_org["updated_at"]) == org["updated_at"]
    assert (stored_user["email"], stored_user["role"]) == (user["email"], "admin")
    assert stored_user["origin"] == a.config.app_name
    for event_type in ("organization.created", "user.created"):
        assert sample(b, "bridge_event_upcasts_total", event_type=event_type, from_version="1") == 1

    # Our producer publishes v2: origin and deleted_at on the wire, applied verbatim.
    response = await a.client.post(
        "/organizations", json={"name": "Ours", "domain": f"ours-{uuid.uuid4().hex[:8]}.test"}
    )
    assert response.status_code == 201, response.text
    ours = response.json()

    async def copied() -> dict[str, Any] | None:
        response = await b.get(f"/organizations/{ours['id']}")
        return response.json() if response.status_code == 200 else None

    assert await eventually(copied, what="v2 organization on B") == ours
    sent = await pair.js.get_last_msg(pair.stream, a.config.subjects.publish)
    body = json.loads(sent.data or b"{}")
    assert body["resource_id"] == str(ours["id"]) and body["schema_version"] == 2
    assert body["payload"]["origin"] == a.config.app_name and "deleted_at" in body["payload"]
    # What a gem consumer reads: the gem's fields, the id a JSON integer.
    assert set(body["payload"]) >= GEM_ORGANIZATION_FIELDS
    assert type(body["payload"]["id"]) is int and body["payload"]["id"] == ours["id"]
    ours_user = await a.client.post(
        "/users", json={"organization_id": ours["id"], "name": "Bo", "email": "bo@ours.example.com"}
    )
    assert ours_user.status_code == 201, ours_user.text

    async def user_event() -> dict[str, Any] | None:
        last = await pair.js.get_last_msg(pair.stream, a.config.subjects.publish)
        decoded: dict[str, Any] = json.loads(last.data or b"{}")
        return decoded if decoded["event_type"] == "user.created" else None

    user_body = await eventually(user_event, what="our user event published")
    assert set(user_body["payload"]) >= GEM_USER_FIELDS
    assert type(user_body["payload"]["organization_id"]) is int
    assert user_body["payload"]["organization_id"] == ours["id"]
    upcast_org = sample(
        b, "bridge_event_upcasts_total", event_type="organization.created", from_version="1"
    )
    assert upcast_org == 1  # still the gem's event only: a v2 event is not upcast


class OrganizationV3(OrganizationV2):
    """v3 adds an optional ``tier`` (the sync handler ignores it)."""

    tier: str | None = None


def schemas_with_v3() -> EventSchemas:
    """The services' registry plus organization v3 (what an upgraded B would declare)."""
    schemas = event_schemas()
    schemas.version("organization", 3, PayloadModel(OrganizationV3))
    schemas.upcaster("organization", 2, lambda payload, envelope: {"tier": None, **payload})
    return schemas


async def test_v3_event_is_dead_lettered_then_applied_after_upgrade_and_replay(
    nats_server: NatsServer, postgres: PostgresServer, unique: str
) -> None:
    stream = f"sync-{unique}"
    names = {"name": f"a{unique}", "peer": f"b{unique}"}
    sides = {"stream": stream, "nats_url": nats_server.url}
    async with AsyncExitStack() as stack:
        a = await start_side(stack, postgres, **names, **sides)
        b_url = await new_database(stack, postgres)
        nc = await nats.connect(nats_server.url)
        stack.push_async_callback(nc.close)
        js = nc.jetstream()
        b_names = {"name": names["peer"], "peer": names["name"]}

        async with AsyncExitStack() as b_stack:
            b = await start_side(b_stack, postgres, **b_names, **sides, database_url=b_url)
            too_new = gem_organization(origin=a.config.app_name, deleted_at=None, tier="gold")
            sent = await publish_as(js, a, "organization", too_new, version=3)
            later = gem_organization(origin=a.config.app_name, deleted_at=None)
            await publish_as(js, a, "organization", later, version=2)

            assert b.state.bridge is not None and b.state.bridge.dead_letters is not None
            dead_letters = b.state.bridge.dead_letters

            async def settled() -> list[Any] | None:
                applied = await row(b, "organizations", later["id"])
                letters = await dead_letters.list()
                return letters if applied is not None and letters else None

            letters = await eventually(settled, what="v3 dead-lettered and the later v2 applied")
            assert [letter.reason for letter in letters] == ["unsupported_schema_version"]
            [letter] = letters
            assert letter.headers["x-dlq-reason"] == "unsupported_schema_version"
            assert letter.headers["x-dlq-original-msg-id"] == sent.event_id
            assert letter.deliveries == 1 and letter.error_class == "Reject"
            assert letter.envelope().schema_version == 3
            assert await row(b, "organizations", too_new["id"]) is None
            assert sample(b, "bridge_unsupported_schema_versions_total",
                          event_type="organization.created", version="3") == 1  # fmt: skip

        # B upgraded: same database and durable, now declaring v3; its release's migration
        # re-installs the capture triggers, which stamp the versions it publishes.
        upgrade = create_async_engine(b_url)
        try:
            await create_all(upgrade, models=[Organization, User], schemas=schemas_with_v3())
        finally:
            await upgrade.dispose()
        b = await start_side(
            stack, postgres, **b_names, **sides, database_url=b_url, event_schemas=schemas_with_v3()
        )
        env = {
            "APP_NAME": b.config.app_name,
            "DESTINATION_APP": a.config.app_name,
            "STREAM_NAME": stream,
            "NATS_URL": nats_server.url,
            "DATABASE_URL": b_url,
        }
        out, err = io.StringIO(), io.StringIO()
        code = await main_async(["--json", "dlq", "replay", str(letter.seq)], env=env, out=out,
                                err=err)  # fmt: skip
        assert code == EXIT_OK, err.getvalue()
        assert json.loads(out.getvalue())["replayed"][0]["dlq_seq"] == letter.seq

        async def replayed() -> dict[str, Any] | None:
            response: httpx.Response = await b.get(f"/organizations/{too_new['id']}")
            return response.json() if response.status_code == 200 else None

        applied = await eventually(replayed, what="the replayed v3 event on B")
        assert (applied["name"], applied["domain"]) == ("Gem Co", too_new["domain"])
        assert applied["origin"] == a.config.app_name
        inbox = await b.scalar(
            "SELECT count(*) FROM bridge_inbox WHERE status = 'processed' "
            "AND event_type = 'organization.created'"
        )
        assert inbox == 2  # the later v2 event and the replayed v3 one
