"""A TCP proxy in the test's event loop that can freeze, reset or slow down one link.

:class:`TcpProxy` listens on a free loopback port and forwards every connection to
``upstream`` (a nats-server, a PostgreSQL server).  A client pointed at :attr:`port`
instead of the server then lives through whatever network the test makes:

- ``pass``: bytes flow both ways as they arrive.
- ``blackhole``: nothing is forwarded and nothing is closed — no FIN, no RST.  The
  proxy stops reading, so what a peer sends waits in the kernel's buffers as in a
  real partition (the sender's TCP stack sees it accepted, the receiver sees
  nothing).  A connection accepted meanwhile is held the same way: its TCP connect
  succeeds, not one byte of the server's greeting arrives.  Clients only notice by
  their own timeouts and keep-alives (NATS pings, query timeouts) — the nastiest
  partition.  Back to ``pass``, the held bytes flow on (the partition healed before
  TCP gave up).
- ``reset``: every open connection (but a stranded one) is aborted with an RST both
  ways (``SO_LINGER`` 0); new connections are accepted and reset at once (the port
  stays bound, so no other process can take it between two modes).
- ``latency``: every chunk is forwarded ``latency`` seconds after it arrived, in each
  direction, order kept.

:meth:`TcpProxy.strand` makes the connections open now dead for good, whatever the
mode later: the path they used is gone (a NAT or firewall that forgot them during the
partition, a failed-over server).  Their upstream side is closed, so the server ends
the session and frees what it held; their client side stays open and hears nothing
ever again, not even a reset — a client blocked on a read waits until its own
timeout, forever without one.  Connections made later follow the mode.
:meth:`TcpProxy.strand_after_reply` does the same to each open connection right after
its next answer reaches the client.

``start()`` / ``stop(timeout)``; the proxy owns and awaits every task it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal

Mode = Literal["pass", "blackhole", "reset", "latency"]
CHUNK = 65536


@dataclass(eq=False)  # identity hash: links live in a set
class _Link:
    """One client connection and its upstream connection."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    stranded: bool = False
    strand_after_reply: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self) -> None:
        """RST both ways (SO_LINGER 0, then close)."""
        for writer in (self.client, self.upstream):
            if writer is not None:
                _rst(writer)


def _rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class TcpProxy:
    """Forward ``127.0.0.1:<port>`` to ``upstream_host:upstream_port`` (module doc)."""

    def __init__(self, upstream_port: int, *, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.mode: Mode = "pass"
        self.latency = 0.0
        self.accepted = 0
        self.forwarded = 0  # bytes, both directions
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._changed = asyncio.Event()  # set and replaced on every mode change
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop listening, drop every connection (RST) and await their tasks."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        links, self._links = list(self._links), set()
        for link in links:
            link.abort()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        if server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), timeout)

    async def __aenter__(self) -> TcpProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def url(self, scheme: str = "nats") -> str:
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def connections(self) -> int:
        """Connections open now (stranded ones included)."""
        return len(self._links)

    # -- modes --------------------------------------------------------------------------
    def set_mode(self, mode: Mode, *, latency: float = 0.0) -> None:
        if mode == "latency" and latency <= 0:
            raise ValueError("latency mode needs latency > 0")
        self.mode, self.latency = mode, latency if mode == "latency" else 0.0
        if mode == "reset":
            for link in list(self._links):
                if not link.stranded:  # its path is gone: not even a reset gets through
                    self._drop(link)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def pass_through(self) -> None:
        self.set_mode("pass")

    def blackhole(self) -> None:
        self.set_mode("blackhole")

    def reset(self) -> None:
        self.set_mode("reset")

    def add_latency(self, seconds: float) -> None:
        self.set_mode("latency", latency=seconds)

    def strand(self) -> int:
        """Make every open connection dead for good (module doc); return how many."""
        live = [link for link in self._links if not link.stranded]
        for link in live:
            self._strand(link)
        return len(live)

    def strand_after_reply(self) -> int:
        """Strand every open connection right after the next chunk it forwards to the
        client: the answer to one request arrives, the next request is never answered
        (the link dies between two round trips of one exchange); return how many."""
        live = [link for link in self._links if not link.stranded]
        for link in live:
            link.strand_after_reply = True
        return len(live)

    def _strand(self, link: _Link) -> None:
        link.stranded = True
        if link.upstream is not None:
            link.upstream.transport.abort()

    # -- forwarding ---------------------------------------------------------------------
    def _flowing(self, link: _Link) -> bool:
        return self.mode in ("pass", "latency") and not link.stranded

    async def _until_flowing(self, link: _Link) -> None:
        while not self._flowing(link):
            await self._changed.wait()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        link = _Link(writer)
        if self.mode == "reset":
            link.abort()
            return
        self._links.add(link)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            self._drop(link)  # the server itself is down: the client sees a reset
            return
        link.upstream = up_writer
        if link.stranded:  # stranded while connecting
            up_writer.transport.abort()
        link.tasks = [
            self._spawn(self._pipe(link, reader, up_writer), "proxy-up"),
            self._spawn(self._pipe(link, up_reader, writer), "proxy-down"),
        ]

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _pipe(
        self, link: _Link, source: asyncio.StreamReader, sink: asyncio.StreamWriter
    ) -> None:
        """One direction: a reader feeding a delay line, a writer draining it."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        writer = self._spawn(self._write(link, queue, sink), "proxy-write")
        try:
            while True:
                await self._until_flowing(link)
                try:
                    data = await source.read(CHUNK)
                except OSError:  # the peer reset: so does the proxy, both ways
                    self._drop(link)
                    return
                queue.put_nowait((time.monotonic(), data))
                if not data:
                    break
            await writer
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    async def _write(
        self, link: _Link, queue: asyncio.Queue[tuple[float, bytes]], sink: asyncio.StreamWriter
    ) -> None:
        while True:
            arrived, data = await queue.get()
            await self._until_flowing(link)
            due = arrived + self.latency
            if due > time.monotonic():
                await asyncio.sleep(due - time.monotonic())
                await self._until_flowing(link)
            if not data:  # EOF from the source: end the whole connection
                self._drop(link, graceful=True)
                return
            try:
                sink.write(data)
                await sink.drain()
            except (OSError, RuntimeError):
                self._drop(link)
                return
            self.forwarded += len(data)
            if link.strand_after_reply and sink is link.client:
                link.strand_after_reply = False
                self._strand(link)

    def _drop(self, link: _Link, *, graceful: bool = False) -> None:
        """Close (``graceful``: FIN) or reset a connection and forget it."""
        self._links.discard(link)
        if graceful:
            for w in (link.client, link.upstream):
                if w is not None:
                    with contextlib.suppress(Exception):
                        w.close()
        else:
            link.abort()
        current = asyncio.current_task()
        for task in link.tasks:
            if task is not current and not task.done():
                task.cancel()
