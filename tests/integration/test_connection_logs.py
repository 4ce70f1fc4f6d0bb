"""What the NATS connection logs, as the issue's users saw it: a wrong port named once
(not one bare ``nats error`` per retry), wrong credentials named and not retried, a
server that goes away and comes back told once each way, and a clean shutdown silent."""

from __future__ import annotations

import logging
import time

import pytest

from bridge.config import BridgeConfig, Credentials
from bridge.errors import ConnectionError
from bridge.testing import NatsServer, free_port
from bridge.transport.connection import Connection

AUTH = "authorization { user: admin, password: s3cret }"


def config(url: str, **kw: object) -> BridgeConfig:
    return BridgeConfig(
        app_name="logs_a", destination_app="logs_b", nats_urls=(url,), reconnect_wait=0.1,
        connect_timeout=0.5, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def connection_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name == "bridge.connection" and r.levelno >= logging.INFO
    ]


async def test_a_wrong_port_is_named_once_as_refused(caplog: pytest.LogCaptureFixture) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    caplog.set_level(logging.DEBUG, logger="bridge.connection")
    with pytest.raises(ConnectionError) as raised:
        await Connection(config(url)).start(timeout=3.0)
    message = str(raised.value)
    assert "refused" in message and url in message and "NATS_URL" in message
    [record] = connection_records(caplog)  # many attempts, one line
    assert record.levelno == logging.WARNING
    assert record.__dict__["cause"] == "refused"
    assert "refused" in record.getMessage()


async def test_wrong_credentials_are_named_at_once_not_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="bridge.connection")
    with NatsServer(config=AUTH) as server:
        wrong = config(server.url, credentials=Credentials(user="admin", password="nope"))
        started = time.monotonic()
        with pytest.raises(ConnectionError) as raised:
            await Connection(wrong).start(timeout=20.0)
        assert time.monotonic() - started < 10.0  # not retried until the deadline
    message = str(raised.value)
    assert "authorization" in message.lower() and "NATS_USER" in message
    assert "nope" not in message
    assert connection_records(caplog) == []  # the error says it, once


async def test_an_outage_is_told_once_when_it_starts_and_once_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="bridge.connection")
    server = NatsServer().start()
    connection = Connection(config(server.url))
    try:
        await connection.start(timeout=10.0)
        caplog.clear()
        server.stop()
        deadline = time.monotonic() + 10
        while connection.is_connected and time.monotonic() < deadline:
            await _sleep()
        for _ in range(20):  # a couple of seconds of failed reconnects (every 0.1 s)
            await _sleep()
        server.start()
        deadline = time.monotonic() + 15
        while not connection.is_connected and time.monotonic() < deadline:
            await _sleep()
        assert connection.is_connected
        messages = [(r.getMessage(), r.__dict__.get("cause")) for r in connection_records(caplog)]
        assert messages[0] == ("nats disconnected; reconnecting", None)
        assert ("nats unreachable; still reconnecting: connection refused", "refused") in messages
        assert messages[-1][0] == "nats reconnected"
        assert len(messages) == 3, messages
    finally:
        await connection.stop(timeout=5)
        server.cleanup()


async def test_a_clean_shutdown_logs_no_reconnect(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="bridge.connection")
    connection = Connection(config(nats_server.url))
    await connection.start(timeout=10.0)
    caplog.clear()
    await connection.stop(timeout=5.0)
    above_debug = [r.getMessage() for r in connection_records(caplog)]
    assert not any("reconnect" in m or "disconnected" in m for m in above_debug), above_debug
    assert connection.snapshot()["state"] == "closed"


async def _sleep() -> None:
    import asyncio

    await asyncio.sleep(0.1)
