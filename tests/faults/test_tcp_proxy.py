"""The fault proxy itself (:mod:`tcp_proxy`), on plain asyncio sockets: each mode does
what the partition scenarios rely on.  Fast (no servers), part of ``make test``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from tcp_proxy import TcpProxy

QUIET = 0.3  # how long "nothing arrives" is watched


@dataclass
class EchoServer:
    """Greets each connection with ``hello\\n``, then echoes; remembers closes."""

    server: asyncio.Server | None = None
    port: int = 0
    closed: int = 0
    writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def start(self) -> EchoServer:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        writer.write(b"hello\n")
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            self.closed += 1
            self.writers.discard(writer)
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()
        await self.server.wait_closed()


@pytest.fixture
async def proxy() -> AsyncIterator[tuple[TcpProxy, EchoServer]]:
    echo = await EchoServer().start()
    proxy = await TcpProxy(echo.port).start()
    yield proxy, echo
    await proxy.stop()
    await echo.stop()


async def connect(proxy: TcpProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def nothing_arrives(reader: asyncio.StreamReader, seconds: float = QUIET) -> bool:
    """True when neither data nor EOF nor a reset arrives within ``seconds``."""
    try:
        await asyncio.wait_for(reader.read(1), seconds)
    except TimeoutError:
        return True
    return False


async def test_pass_forwards_both_ways(proxy: tuple[TcpProxy, EchoServer]) -> None:
    p, _ = proxy
    reader, writer = await connect(p)
    assert await reader.readline() == b"hello\n"
    writer.write(b"ping\n")
    assert await asyncio.wait_for(reader.readline(), 2) == b"ping\n"
    writer.close()


async def test_blackhole_holds_open_connections_silently_and_heals(
    proxy: tuple[TcpProxy, EchoServer],
) -> None:
    p, echo = proxy
    reader, writer = await connect(p)
    assert await reader.readline() == b"hello\n"
    p.blackhole()
    writer.write(b"held\n")
    await writer.drain()  # accepted by the kernel: the sender cannot tell
    assert await nothing_arrives(reader)  # no echo, no FIN, no RST
    assert echo.closed == 0
    p.pass_through()
    assert await asyncio.wait_for(reader.readline(), 2) == b"held\n"  # healed: it flows on
    writer.close()


async def test_blackhole_accepts_new_connections_but_forwards_nothing(
    proxy: tuple[TcpProxy, EchoServer],
) -> None:
    p, _ = proxy
    p.blackhole()
    reader, writer = await connect(p)  # the TCP connect itself succeeds
    assert await nothing_arrives(reader)  # not even the server's greeting
    p.pass_through()
    assert await asyncio.wait_for(reader.readline(), 2) == b"hello\n"
    writer.close()


async def test_reset_aborts_open_connections_and_refuses_new_ones(
    proxy: tuple[TcpProxy, EchoServer],
) -> None:
    p, _ = proxy
    reader, writer = await connect(p)
    assert await reader.readline() == b"hello\n"
    p.reset()
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(10), 2)
    writer.close()
    reader2, writer2 = await connect(p)
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader2.read(10), 2)
    writer2.close()
    assert p.connections == 0
    p.pass_through()
    reader3, writer3 = await connect(p)
    assert await asyncio.wait_for(reader3.readline(), 2) == b"hello\n"
    writer3.close()


async def test_latency_delays_each_direction(proxy: tuple[TcpProxy, EchoServer]) -> None:
    p, _ = proxy
    reader, writer = await connect(p)
    assert await reader.readline() == b"hello\n"
    p.add_latency(0.15)
    started = time.monotonic()
    writer.write(b"slow\n")
    assert await asyncio.wait_for(reader.readline(), 2) == b"slow\n"
    assert time.monotonic() - started >= 0.3  # 0.15 s there and 0.15 s back
    p.pass_through()
    started = time.monotonic()
    writer.write(b"fast\n")
    assert await asyncio.wait_for(reader.readline(), 2) == b"fast\n"
    assert time.monotonic() - started < 0.15
    writer.close()


async def test_stranded_connection_stays_dead_after_healing_new_ones_work(
    proxy: tuple[TcpProxy, EchoServer],
) -> None:
    p, echo = proxy
    reader, writer = await connect(p)
    assert await reader.readline() == b"hello\n"
    p.blackhole()
    assert p.strand() == 1
    p.reset()  # not even a reset reaches it
    p.pass_through()
    writer.write(b"lost\n")
    await writer.drain()
    assert await nothing_arrives(reader)  # dead for good: no data, no FIN, no RST
    for _ in range(50):  # the server saw its side close (the session ended)
        if echo.closed:
            break
        await asyncio.sleep(0.02)
    assert echo.closed == 1
    reader2, writer2 = await connect(p)
    assert await asyncio.wait_for(reader2.readline(), 2) == b"hello\n"
    writer2.close()
    writer.close()


async def test_strand_after_reply_lets_one_answer_through_then_nothing(
    proxy: tuple[TcpProxy, EchoServer],
) -> None:
    p, _ = proxy
    reader, writer = await connect(p)
    assert await reader.readline() == b"hello\n"
    assert p.strand_after_reply() == 1
    writer.write(b"one\n")
    assert await asyncio.wait_for(reader.readline(), 2) == b"one\n"  # answered
    writer.write(b"two\n")
    assert await nothing_arrives(reader)  # the next one never is
    writer.close()


async def test_stop_ends_every_task_and_connection() -> None:
    echo = await EchoServer().start()
    p = await TcpProxy(echo.port).start()
    reader, writer = await connect(p)
    assert await reader.readline() == b"hello\n"
    p.blackhole()
    await p.stop()
    assert p.connections == 0 and not p._tasks
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        data = await asyncio.wait_for(reader.read(10), 2)
        if not data:
            raise asyncio.IncompleteReadError(b"", 1)
    writer.close()
    await echo.stop()
