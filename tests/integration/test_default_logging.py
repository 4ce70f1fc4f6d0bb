"""Logs a user gets without configuring anything: the FastAPI integration configures
logging by default (one JSON object per line when the output is not a terminal).  The
issue's examples, each in a process of its own: a handler bug — once ``handler failed``
x5 and ``dead-lettered`` with no exception, no traceback, no event id — now shows, on
every line, the event id, subject and delivery count, the exception's type and message,
and on the dead letter (ERROR) the traceback down to the user's function; the clean
shutdown after it logs no reconnect; a wrong NATS port — once 30 bare ``nats error``
lines — is one line naming the refused connection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bridge.testing import NatsServer, free_port

PROGRAM = Path(__file__).with_name("handler_bug_program.py")


WRONG_PORT = """
import asyncio, os
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import create_async_engine
from bridge import Bridge, bridge_lifespan, configure_bidirectional
from bridge.errors import ConnectionError
from bridge.schema import create_all

async def main():
    config = configure_bidirectional(
        "shop", "stock", nats_urls=os.environ["NATS_URL"], connect_timeout=0.5,
        reconnect_wait=0.1)
    engine = create_async_engine(os.environ["DATABASE_URL"])
    await create_all(engine)  # the schema check passes: NATS is what is wrong
    bridge = Bridge(config, engine=engine)
    app = FastAPI(lifespan=bridge_lifespan(lambda app: bridge, start_timeout=3))
    try:
        async with app.router.lifespan_context(app):
            raise AssertionError("started without NATS")
    except ConnectionError as exc:
        print(exc)
    await engine.dispose()

asyncio.run(main())
"""


def run_program(env: dict[str, str], *code: str) -> tuple[str, list[dict[str, Any]]]:
    command = [sys.executable, "-c", code[0]] if code else [sys.executable, str(PROGRAM)]
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not one JSON record per line: {line!r}") from None
    return result.stdout.strip(), records


def test_a_handler_bug_logs_the_exception_event_and_traceback_by_default(
    nats_server: NatsServer, database_url: str, unique: str
) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CONSUMER_MODE")},
        "NATS_URL": nats_server.url, "DATABASE_URL": database_url,
        "STREAM_NAME": f"logs{unique}", "APP": f"shop{unique}", "PEER": f"stock{unique}",
    }  # fmt: skip
    event_id, records = run_program(env)
    subject = f"stock{unique}.sync.shop{unique}"
    failed = [r for r in records if r["message"] == "handler failed"]
    assert [r["deliveries"] for r in failed] == [1, 2, 3]
    for record in failed:
        assert record["level"] == "warning"
        assert record["event_id"] == event_id and record["subject"] == subject
        assert record["error_type"] == "ZeroDivisionError"
        assert record["error"] == "float division by zero"
        assert "traceback" not in record  # at DEBUG only, and on the dead letter
    [letter] = [r for r in records if r["message"] == "dead-lettered"]
    assert letter["level"] == "error"
    assert letter["event_id"] == event_id and letter["subject"] == subject
    assert letter["deliveries"] == 3 and letter["reason"] == "max_deliver_exceeded"
    assert letter["error_type"] == "ZeroDivisionError"
    assert "in parse_price" in letter["traceback"] and "ZeroDivisionError" in letter["traceback"]
    # the lifespan's clean shutdown: no disconnect, no reconnect
    connection = [r["message"] for r in records if r["logger"] == "bridge.connection"]
    assert not [m for m in connection if "disconnect" in m or "reconnect" in m], connection


def test_a_wrong_nats_port_is_one_line_naming_the_refused_connection(
    database_url: str,
) -> None:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CONSUMER_MODE")},
        "NATS_URL": f"nats://127.0.0.1:{port}", "DATABASE_URL": database_url,
    }  # fmt: skip
    error, records = run_program(env, WRONG_PORT)
    assert "connection refused" in error and f"127.0.0.1:{port}" in error
    connection = [r for r in records if r["logger"] == "bridge.connection"]
    assert [(r["level"], r["message"], r["cause"]) for r in connection] == [
        ("warning", "nats unreachable; retrying: connection refused", "refused")
    ]
