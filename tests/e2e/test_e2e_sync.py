"""System A and System B in one process over a real nats-server: changes cross both ways.

A→B and B→A create/update/delete, a user arriving before its organization, and
no echo (each change crosses exactly once: counted per subject in the stream).
"""

from __future__ import annotations

import json
from contextlib import AsyncExitStack
from typing import Any

import httpx
from e2e_support import Pair, Side, eventually, new_id, start_side

from bridge.envelope import Envelope
from bridge.testing import NatsServer, PostgresServer


async def created(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def seen(side: Side, path: str, **expected: Any) -> dict[str, Any]:
    """Poll ``side`` until ``path`` answers 200 with the ``expected`` fields."""

    async def probe() -> dict[str, Any] | None:
        response = await side.get(path)
        if response.status_code != 200:
            return None
        body: dict[str, Any] = response.json()
        return body if all(body.get(k) == v for k, v in expected.items()) else None

    return await eventually(probe, what=f"{path} on {side.name} with {expected}")


async def gone(side: Side, path: str) -> None:
    async def probe() -> bool:
        return (await side.get(path)).status_code == 404

    await eventually(probe, what=f"{path} deleted on {side.name}")


async def crud_crosses(src: Side, dst: Side, tag: str) -> None:
    org = await created(
        await src.client.post(
            "/organizations", json={"organization": {"name": "Acme", "domain": f"{tag}.test"}}
        )
    )
    copy = await seen(dst, f"/organizations/{org['id']}")
    assert copy == org  # every field, the sender's updated_at and origin verbatim
    user = await created(
        await src.client.post(
            "/users",
            json={"organization_id": org["id"], "name": "Ann", "email": f"ann@{tag}.example.com"},
        )
    )
    assert await seen(dst, f"/users/{user['id']}") == user

    renamed = (
        await src.client.patch(f"/organizations/{org['id']}", json={"name": "Renamed"})
    ).json()
    assert renamed["updated_at"] > org["updated_at"]
    assert await seen(dst, f"/organizations/{org['id']}", name="Renamed") == renamed
    promoted = (await src.client.patch(f"/users/{user['id']}", json={"role": "admin"})).json()
    assert await seen(dst, f"/users/{user['id']}", role="admin") == promoted

    assert (await src.client.delete(f"/users/{user['id']}")).status_code == 204
    await gone(dst, f"/users/{user['id']}")
    assert (await src.client.delete(f"/organizations/{org['id']}")).status_code == 204
    await gone(dst, f"/organizations/{org['id']}")
    # Tombstones are identical on both sides too.
    assert await src.rows("organizations") == await dst.rows("organizations")
    assert await src.rows("users") == await dst.rows("users")


async def test_a_to_b_create_update_delete(pair: Pair) -> None:
    await crud_crosses(pair.a, pair.b, "a-to-b")


async def test_b_to_a_create_update_delete(pair: Pair) -> None:
    await crud_crosses(pair.b, pair.a, "b-to-a")


async def test_no_echo_each_change_crosses_once(pair: Pair) -> None:
    a, b = pair.a, pair.b
    org = await created(
        await a.client.post("/organizations", json={"name": "E", "domain": "echo.test"})
    )
    await a.client.patch(f"/organizations/{org['id']}", json={"active": False})
    borg = await created(
        await b.client.post("/organizations", json={"name": "F", "domain": "f.test"})
    )
    await seen(b, f"/organizations/{org['id']}", active=False)
    await seen(a, f"/organizations/{borg['id']}")

    async def settled() -> dict[str, int] | None:
        status_a = (await a.get("/sync_status")).json()
        status_b = (await b.get("/sync_status")).json()
        if status_a["outbox"]["pending"] or status_b["outbox"]["pending"]:
            return None
        return await pair.subject_counts()

    counts = await eventually(settled, what="outboxes drained")
    # A published its create + update, B its one create; neither re-published what it applied.
    assert counts.get(a.config.subjects.publish) == 2, counts
    assert counts.get(b.config.subjects.publish) == 1, counts
    assert await a.scalar("SELECT count(*) FROM bridge_outbox") == 2
    assert await b.scalar("SELECT count(*) FROM bridge_outbox") == 1
    assert not any(subject.endswith(".dlq") for subject in counts), counts


async def test_user_before_its_organization_is_retried_not_dead_lettered(pair: Pair) -> None:
    a, b = pair.a, pair.b
    org = await created(
        await a.client.post("/organizations", json={"name": "O", "domain": "order.test"})
    )
    user = await created(
        await a.client.post(
            "/users",
            json={"organization_id": org["id"], "name": "U", "email": "u@order.example.com"},
        )
    )
    await seen(b, f"/users/{user['id']}")
    # Replay the same two changes as new records, user first, straight onto A's subject.
    org_id, user_id = new_id(), new_id()
    org_row = {**(await a.rows("organizations"))[0]}
    org_payload = {
        **json.loads(json.dumps(org_row, default=str)), "id": org_id, "domain": "order2.test",
        "updated_at": org["updated_at"], "created_at": org["created_at"], "deleted_at": None,
    }  # fmt: skip
    user_payload = {
        **user, "id": user_id, "organization_id": org_id, "email": "u2@order.example.com",
        "deleted_at": None,
    }  # fmt: skip
    for resource, payload in (("user", user_payload), ("organization", org_payload)):
        env = Envelope(
            event_type=f"{resource}.created", producer=a.name, resource_type=resource,
            resource_id=str(payload["id"]), payload=payload,
        )  # fmt: skip
        ack = await pair.js.publish(
            a.config.subjects.publish, env.to_bytes(), headers=env.headers(), stream=pair.stream
        )
        assert not ack.duplicate
    await seen(b, f"/users/{user_id}", organization_id=org_id)
    record = await b.scalar(
        f"SELECT status || ':' || attempts FROM bridge_inbox WHERE resource_id = '{user_id}'"
    )
    status, attempts = record.split(":")
    assert status == "processed" and int(attempts) >= 2, (
        record
    )  # failed at least once, then applied
    counts = await pair.subject_counts()
    assert not any(subject.endswith(".dlq") for subject in counts), counts


async def test_push_consumers_both_ways(
    nats_server: NatsServer, postgres: PostgresServer, unique: str
) -> None:
    async with AsyncExitStack() as stack:
        sides = [
            await start_side(
                stack, postgres, name=f"{me}{unique}", peer=f"{peer}{unique}",
                stream=f"push-{unique}", nats_url=nats_server.url, consumer_mode="push",
            )
            for me, peer in (("a", "b"), ("b", "a"))
        ]  # fmt: skip
        a, b = sides
        assert a.config.consumer_mode == b.config.consumer_mode == "push"
        await crud_crosses(a, b, "push-a")
        await crud_crosses(b, a, "push-b")
