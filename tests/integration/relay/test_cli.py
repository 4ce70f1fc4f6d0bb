"""`bridge` CLI against real NATS + Postgres, including a dead letter replayed end to end."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import nats
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from bridge.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main_async
from bridge.cli.provision import main_async as provision_main
from bridge.envelope import Envelope
from bridge.errors import Reject
from bridge.routing.router import Router
from bridge.runtime import Bridge
from bridge.testing import NatsServer
from bridge.transport.jsapi import JetStreamApi

from .conftest import Widget
from .test_runtime import side, wait_for, widget_router


async def run(env: dict[str, str], *argv: str) -> tuple[int, Any, str]:
    out, err = io.StringIO(), io.StringIO()
    code = await main_async(["--json", *argv], env=env, out=out, err=err)
    text_out = out.getvalue()
    return code, (json.loads(text_out) if text_out.strip() else None), err.getvalue()


def cli_env(
    nats: NatsServer, unique: str, app: str, peer: str, database_url: str
) -> dict[str, str]:
    return {
        "APP_NAME": f"{app}{unique}",
        "DESTINATION_APP": f"{peer}{unique}",
        "STREAM_NAME": f"s{unique}",
        "NATS_URL": nats.url,
        "DATABASE_URL": database_url,
        "MAX_DELIVER": "3",
        "ACK_WAIT": "5s",
        "BACKOFF": "0.2s 0.5s",
    }


async def test_cli_end_to_end(
    nats_server: NatsServer, unique: str, engines: tuple[AsyncEngine, AsyncEngine]
) -> None:
    eng_a, eng_b = engines
    rejecting = {"on": True}
    router = widget_router()
    apply_widget = router.handler_for(
        Envelope(
            event_type="widget.created",
            producer="x",
            resource_type="widget",
            resource_id="1",
            payload={},
        )
    )
    assert apply_widget is not None
    strict = Router()

    async def maybe_reject(session: AsyncSession, envelope: Envelope) -> None:
        if rejecting["on"] and envelope.payload.get("name") == "poison":
            raise Reject("poison is not allowed here")
        await apply_widget(session, envelope)

    strict.on_resource("widget", maybe_reject)
    env_a = cli_env(nats_server, unique, "a", "b", str(eng_a.url.render_as_string(False)))
    env_b = cli_env(nats_server, unique, "b", "a", str(eng_b.url.render_as_string(False)))

    a = Bridge(side(nats_server, unique, "a", "b"), engine=eng_a, router=widget_router())
    b = Bridge(side(nats_server, unique, "b", "a"), engine=eng_b, router=strict)
    async with a, b:
        # provision: verify passes (the bridges applied), plan is empty
        code, plan, _ = await run(env_b, "provision", "plan")
        assert code == EXIT_OK and plan["changes"] == []
        code, _, _ = await run(env_b, "provision", "verify")
        assert code == EXIT_OK

        async with a.session_factory.begin() as session:
            session.add(Widget(name="poison"))

        async def dead_lettered() -> bool:
            code, letters, _ = await run(env_b, "dlq", "list")
            return code == EXIT_OK and len(letters) == 1

        await wait_for(dead_lettered)
        _, letters, _ = await run(env_b, "dlq", "list")
        assert letters[0]["reason"] == "rejected"
        seq = letters[0]["seq"]
        code, shown, _ = await run(env_b, "dlq", "show", str(seq))
        assert code == EXIT_OK and json.loads(shown["body"])["payload"]["name"] == "poison"

        code, status, _ = await run(env_b, "status")
        assert code == EXIT_OK and status["dead_letters"] == 1
        assert status["dead_letters_oldest_age_seconds"] > 0
        assert status["inbox"]["dead_lettered"] == 1 and status["nats"]["connected"]

        rejecting["on"] = False  # "deploy the fix", then replay
        code, replayed, _ = await run(env_b, "dlq", "replay", str(seq))
        assert code == EXIT_OK and len(replayed["replayed"]) == 1
        assert replayed["summary"] == {"letters": 1, "replayed": 1, "not_replayed": 0}

        async def applied() -> bool:
            async with eng_b.connect() as conn:
                n = (
                    await conn.execute(text("SELECT count(*) FROM widgets WHERE name='poison'"))
                ).scalar()
                return n == 1

        await wait_for(applied)
        code, letters, _ = await run(env_b, "dlq", "list")  # the replayed letter was handled
        assert code == EXIT_OK and letters == []
        code, status, _ = await run(env_b, "status")
        assert status["dead_letters"] == 0 and status["dead_letters_oldest_age_seconds"] == 0
        code, _, err = await run(env_b, "dlq", "purge", str(seq))
        assert code == EXIT_FAILED and f"no dead letter at sequence {seq}" in err

        # outbox: list, retry (a failed row), purge sent rows
        code, rows, _ = await run(env_a, "outbox", "list", "--status", "sent")
        assert code == EXIT_OK and len(rows) == 1
        async with eng_a.begin() as conn:
            await conn.execute(text("UPDATE bridge_outbox SET status='failed', attempts=20"))
        code, result, _ = await run(env_a, "outbox", "retry")
        assert code == EXIT_OK and result["requeued"] == 1

        async def resent() -> bool:
            _, rows, _ = await run(env_a, "outbox", "list", "--status", "sent")
            return len(rows) == 1

        await wait_for(resent)
        await asyncio.sleep(0.01)
        code, result, _ = await run(env_a, "outbox", "purge", "--older-than", "0s")
        assert code == EXIT_OK and result["purged"] == 1

        code, checks, _ = await run(env_b, "doctor")
        assert code == EXIT_OK and checks and all(c["allowed"] for c in checks)


async def test_cli_usage_and_config_errors(nats_server: NatsServer) -> None:
    code, _, err = await run({}, "status")
    assert code == EXIT_USAGE and "APP_NAME" in err
    code, _, _ = await run({}, "nonsense")
    assert code == EXIT_USAGE


async def test_cli_verify_names_missing_stream(
    nats_server: NatsServer, unique: str, database_url: str
) -> None:
    env = cli_env(nats_server, unique, "a", "b", database_url)
    code, result, _ = await run(env, "provision", "verify")
    assert code == EXIT_FAILED and not result["ok"]
    assert result["problems"][0]["message"] == f"MISSING stream s{unique}"
    code, result, _ = await run(env, "provision", "apply")
    assert code == EXIT_OK and {c["kind"] for c in result["applied"]} == {
        "create_stream",
        "create_consumer",
    }
    assert result["remaining"] == []


async def test_bridge_provision_and_bridge_provision_of_the_pair_say_the_same(
    nats_server: NatsServer, unique: str, database_url: str
) -> None:
    """One plan/apply/verify: ``bridge provision`` (this app) and ``bridge-provision``
    (the pair) report a drifted consumer in the same words and the same JSON."""
    env = cli_env(nats_server, unique, "a", "b", database_url)
    assert (await run(env, "provision", "apply"))[0] == EXIT_OK
    nc = await nats.connect(nats_server.url)
    try:
        api = JetStreamApi(nc)
        durable = f"a{unique}-workers"
        current = (await api.consumer_info(f"s{unique}", durable))["config"]
        await api.save_consumer(f"s{unique}", {**current, "max_deliver": 9}, action="update")
    finally:
        await nc.close()

    app_code, app_json, _ = await run(env, "provision", "verify")
    pair_env = {**env, "APPS": f"a{unique},b{unique}"}
    out, err = io.StringIO(), io.StringIO()
    pair_code = await provision_main(["verify", "--json"], env=pair_env, stdout=out, stderr=err)
    pair_json = json.loads(out.getvalue())
    drift = f"DRIFT consumer s{unique}/{durable}: max_deliver: 9 (want -1)"
    assert app_code == pair_code == EXIT_FAILED
    assert app_json["command"] == pair_json["command"] == "verify"
    [app_problem] = app_json["problems"]
    assert app_problem["message"] == drift
    assert app_problem in pair_json["problems"]  # the pair also misses b's consumer
