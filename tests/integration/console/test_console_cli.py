"""``bridge console``: the console served on its own, with the app's environment.

It runs a passive bridge (no relay, no consumer, the stream only verified), so it
sees what the running app's processes leave (dead letters, outbox, inbox) without
taking part; a port in use and a missing stream are one line each.
"""

from __future__ import annotations

import asyncio
import io
import socket

import httpx
from console_support import TOKEN, ConsoleStack
from sqlalchemy.ext.asyncio import create_async_engine

from bridge.cli import EXIT_UNREACHABLE, EXIT_USAGE, main_async
from bridge.cli._console import bind, serve_console
from bridge.env import config_from_env
from bridge.schema import create_all
from bridge.testing import NatsServer


def app_env(stack: ConsoleStack, database_url: str) -> dict[str, str]:
    cfg = stack.config
    return {
        "APP_NAME": cfg.app_name,
        "DESTINATION_APP": cfg.destination_app,
        "NATS_URL": cfg.nats_urls[0],
        "STREAM_NAME": cfg.stream_name,
        "DATABASE_URL": database_url,
        "BRIDGE_CONSOLE_TOKEN": TOKEN,
    }


async def test_the_standalone_console_shows_the_apps_dead_letters_and_stops(
    stack: ConsoleStack, database_url: str
) -> None:
    stack.reject.add("r1")
    await stack.publish_as_peer("r1")
    (letter,) = await stack.dead_letters(1)
    env = app_env(stack, database_url)
    engine = create_async_engine(database_url)
    sock = bind("127.0.0.1", 0)
    address = sock.getsockname()
    stop = asyncio.Event()
    urls: list[str] = []
    task = asyncio.create_task(
        serve_console(config_from_env(env), engine, env, sock, stop, listening=urls.append)
    )
    try:
        while not urls:
            assert not task.done(), task.exception()
            await asyncio.sleep(0.02)
        async with httpx.AsyncClient() as client:
            page = await client.get(urls[0])
            assert page.status_code == 200
            assert f'id="letter-{letter.seq}"' in page.text
            assert "not in this process" in page.text  # neither relay nor consumer runs here
            root = await client.get(urls[0].removesuffix("/console/") + "/")
            assert root.status_code == 307 and root.headers["location"] == "/console/"
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
        sock.close()
        await engine.dispose()
    with socket.socket() as probe:
        assert probe.connect_ex(address) != 0, "the port is closed after stop"


async def test_a_port_in_use_is_one_line(stack: ConsoleStack, database_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        out, err = io.StringIO(), io.StringIO()
        code = await main_async(
            ["console", "--port", str(port)], env=app_env(stack, database_url), out=out, err=err
        )
    assert code == EXIT_USAGE
    assert err.getvalue().count("\n") == 1
    assert f"cannot listen on 127.0.0.1:{port}" in err.getvalue()
    assert "choose another --port" in err.getvalue()


async def test_nats_unreachable_is_one_line(database_url: str, unique: str) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    env = {
        "APP_NAME": f"x{unique}", "DESTINATION_APP": f"y{unique}",
        "NATS_URL": f"nats://127.0.0.1:{port}", "DATABASE_URL": database_url,
    }  # fmt: skip
    out, err = io.StringIO(), io.StringIO()
    code = await main_async(["console", "--port", "0"], env=env, out=out, err=err)
    assert code == EXIT_UNREACHABLE
    assert err.getvalue().startswith("bridge: ") and err.getvalue().count("\n") == 1


async def test_a_missing_stream_does_not_stop_it_the_page_says_what_it_cannot_read(
    nats_server: NatsServer, database_url: str, unique: str
) -> None:
    env = {
        "APP_NAME": f"x{unique}", "DESTINATION_APP": f"y{unique}", "NATS_URL": nats_server.url,
        "STREAM_NAME": f"missing{unique}", "DATABASE_URL": database_url,
    }  # fmt: skip
    engine = create_async_engine(database_url)
    await create_all(engine)
    sock = bind("127.0.0.1", 0)
    stop = asyncio.Event()
    urls: list[str] = []
    task = asyncio.create_task(
        serve_console(config_from_env(env), engine, env, sock, stop, listening=urls.append)
    )
    try:
        while not urls:
            assert not task.done(), task.exception()
            await asyncio.sleep(0.02)
        async with httpx.AsyncClient() as client:
            page = await client.get(urls[0])
        assert page.status_code == 200
        assert 'id="read-only"' in page.text  # no BRIDGE_CONSOLE_TOKEN
        dead_letters = page.text[page.text.index('id="dead-letters"') :]
        assert "unavailable:" in dead_letters.split("</section>")[0]
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
        sock.close()
        await engine.dispose()


async def test_a_short_token_is_a_configuration_error(
    stack: ConsoleStack, database_url: str
) -> None:
    env = {**app_env(stack, database_url), "BRIDGE_CONSOLE_TOKEN": "short"}
    out, err = io.StringIO(), io.StringIO()
    code = await main_async(["console", "--port", "0"], env=env, out=out, err=err)
    assert code == EXIT_USAGE
    assert "console.token must be at least 16 characters (BRIDGE_CONSOLE_TOKEN" in err.getvalue()
