"""Deployments with one link through a :class:`tcp_proxy.TcpProxy`, for partition scenarios.

- :func:`nats_partition_pair`: System A talks to NATS directly, System B's bridge
  (relay and consumer) through the proxy.
- :func:`relay_partition_pair`: System B runs as a web instance (API + consumer, its
  database direct, no relay) plus a relay-only instance whose database URL points at
  the proxy — the partition cuts exactly one relay from PostgreSQL while B's API and
  consumer, and all of A, go on.

Both return the :class:`fault_stack.Deployment` the load and the checker use (the
checker always reads NATS and the databases directly) and the running proxy; the
exit stack stops everything.  :func:`wait_for` polls a condition with a deadline
(scenarios wait for what they need, never for a fixed sleep).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from fault_stack import Deployment, InProcessInstance, in_process_side, new_database
from tcp_proxy import TcpProxy

from bridge.outbox._store import LIVENESS_LOCK_CLASS
from bridge.testing import PostgresServer, to_plain_url


def via_proxy(url: str, proxy: TcpProxy) -> str:
    """``url`` with its host and port replaced by the proxy's (user and path kept)."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{proxy.port}" if userinfo else f"127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def upstream_port(url: str) -> int:
    parts = urlsplit(url)
    if parts.port is None:
        raise AssertionError(f"{url} names no port")
    return parts.port


async def start_proxy(url: str) -> TcpProxy:
    """A proxy to the server of ``url``; the caller registers ``proxy.stop`` *last* on its
    stack, so it runs first: every proxied connection is reset before the instances
    behind it stop, and no teardown waits on a stranded or blackholed connection."""
    return await TcpProxy(upstream_port(url), upstream_host=urlsplit(url).hostname or "").start()


async def nats_partition_pair(
    stack: AsyncExitStack,
    postgres: PostgresServer,
    unique: str,
    *,
    stream: str,
    nats_url: str,
    **overrides: Any,
) -> tuple[Deployment, TcpProxy]:
    """A direct to NATS, B's bridge through the returned proxy (module doc)."""
    db_a, db_b = await new_database(postgres, stack), await new_database(postgres, stack)
    proxy = await start_proxy(nats_url)
    stack.push_async_callback(proxy.stop)  # if a start below fails
    urls = (nats_url,)
    a = await in_process_side(
        f"a{unique}", f"b{unique}", db_a, stream=stream, nats_urls=urls, **overrides
    )
    deployment = Deployment(a, a, stream, urls)
    stack.push_async_callback(deployment.stop)
    deployment.b = await in_process_side(
        f"b{unique}", f"a{unique}", db_b, stream=stream, nats_urls=(proxy.url(),), **overrides
    )
    stack.push_async_callback(proxy.stop)
    return deployment, proxy


async def relay_partition_pair(
    stack: AsyncExitStack,
    postgres: PostgresServer,
    unique: str,
    *,
    stream: str,
    nats_urls: tuple[str, ...],
    **overrides: Any,
) -> tuple[Deployment, TcpProxy, InProcessInstance]:
    """B's only relay reaches its database through the returned proxy (module doc)."""
    db_a, db_b = await new_database(postgres, stack), await new_database(postgres, stack)
    proxy = await start_proxy(db_b)
    stack.push_async_callback(proxy.stop)  # if a start below fails
    common: dict[str, Any] = {"stream": stream, "nats_urls": nats_urls}
    a = await in_process_side(f"a{unique}", f"b{unique}", db_a, **common, **overrides)
    deployment = Deployment(a, a, stream, nats_urls)
    stack.push_async_callback(deployment.stop)
    deployment.b = await in_process_side(
        f"b{unique}", f"a{unique}", db_b, **common, **{**overrides, "enable_relay": False}
    )
    relay_side = await in_process_side(
        f"b{unique}",
        f"a{unique}",
        via_proxy(db_b, proxy),
        **common,
        **{**overrides, "enable_consumer": False},
    )
    relay = relay_side.instances[0]
    assert isinstance(relay, InProcessInstance)
    stack.push_async_callback(relay.stop)
    stack.push_async_callback(proxy.stop)
    return deployment, proxy, relay


async def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``condition`` every 50 ms; return the seconds it took, fail after ``timeout``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout}s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def liveness_lock_held(database_url: str, owner: str, *, timeout: float) -> float:
    """Wait until the relay ``owner`` holds its liveness lock (its LISTEN connection is
    up, :mod:`bridge.outbox._store`); return the seconds it took."""
    started = time.monotonic()
    conn = await asyncpg.connect(to_plain_url(database_url), timeout=5)
    try:
        while not await conn.fetchval(
            "SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND classid = $1 AND objid = hashtext($2)::oid AND objsubid = 2",
            LIVENESS_LOCK_CLASS,
            owner,
        ):
            if time.monotonic() - started > timeout:
                raise AssertionError(f"relay {owner}: no liveness lock after {timeout}s")
            await asyncio.sleep(0.1)
    finally:
        await conn.close()
    return time.monotonic() - started
