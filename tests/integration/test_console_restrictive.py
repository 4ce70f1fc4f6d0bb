"""The console in restrictive mode, on a real nats-server with the generated users.

An app user may not read dead letters (the JetStream API is the admin's): the
console of a service running as that user says so — which credentials to use — and
refuses replay and purge with the same reason, instead of waiting on the server; with
the admin's credentials (what ``bridge console`` is run with in restrictive mode) the
letters are listed.
"""

from __future__ import annotations

import time

import httpx
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import create_async_engine
from test_restrictive import EnvFactory, envs, wait_for  # noqa: F401 - shared fixture

from bridge import Bridge, bridge_lifespan, schema
from bridge.config import Credentials
from bridge.envelope import Envelope
from bridge.integrations.console.app import Console, mount_console
from bridge.integrations.console.options import ConsoleOptions

TOKEN = "restrictive-token-0123456789"


async def test_an_app_users_console_says_dead_letters_need_the_admin(
    envs: EnvFactory,  # noqa: F811
    database_url: str,
) -> None:
    env = await envs()
    await env.provision(env.a, env.b)
    cfg = env.cfg(env.a)
    letter = Envelope(event_type="organization.created", producer=env.b,
                      resource_type="organization", resource_id="1", payload={})  # fmt: skip
    await env.admin.jetstream().publish(cfg.subjects.dlq, letter.to_bytes())
    engine = create_async_engine(database_url)
    await schema.create_all(engine)
    app = FastAPI(lifespan=bridge_lifespan(lambda _app: Bridge(cfg, engine=engine)))
    mount_console(app, Console(ConsoleOptions(token=TOKEN, sample_interval=0.2)))
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://c"
            ) as client,
        ):
            started = time.monotonic()
            page = await client.get("/console/")
            assert time.monotonic() - started < 3.0, "no wait on the server's silence"
            assert page.status_code == 200
            assert 'id="letters-unavailable"' in page.text
            assert "may not read the stream (restrictive mode)" in page.text
            assert f".devstack/{cfg.app_name}.admin.env" in page.text
            await client.post("/console/login", data={"token": TOKEN})
            signed = (await client.get("/console/")).text
            csrf = signed.split('name="csrf" value="')[1].split('"')[0]
            refused = await client.post("/console/dlq/replay", data={"one": "1", "csrf": csrf})
            assert refused.status_code == 503
            assert "may not read the stream" in refused.text
    finally:
        await engine.dispose()

    admin = cfg.with_(credentials=Credentials(user=env.stack.admin.user,
                                              password=env.stack.admin.password))  # fmt: skip
    engine = create_async_engine(database_url)
    app = FastAPI(lifespan=bridge_lifespan(lambda _app: Bridge(admin, engine=engine)))
    mount_console(app, Console(ConsoleOptions(sample_interval=0.2)))
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://c"
            ) as client,
        ):
            page = (await client.get("/console/")).text
            assert 'id="letters-unavailable"' not in page
            assert 'id="letter-' in page
    finally:
        await engine.dispose()
