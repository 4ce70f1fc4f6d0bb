"""A nats-server whose JetStream file storage is capped, and raised again by a config reload.

Two limits fill up differently (nats-server 2.15):

- ``server``: ``jetstream { max_file_store }`` — the whole server's disk budget; a full
  store answers a publish with 503 ``insufficient resources`` (err_code 10023);
- ``account``: ``accounts { SYNC: { jetstream: { max_file } } }`` — an account's budget,
  how operators usually share a cluster; a full account answers 400 ``resource limits
  exceeded for account`` (err_code 10002).

Either way the stream's own limits (``max_bytes``, ``discard: old``) never come into
play: the server refuses the message instead of discarding an old one.  Clients of the
account variant need no credentials (``no_auth_user``), so the services, the load and
the checker connect as usual.  :func:`raise_limit` frees space the way an operator
would without a restart: a bigger limit and ``SIGHUP`` (config reload).
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Literal

from bridge.testing import NatsServer

Limit = Literal["server", "account"]


def storage_config(kind: Limit, store_dir: Path, limit: str) -> str:
    """The config text that caps JetStream file storage at ``limit`` (e.g. ``"256KB"``)."""
    if kind == "server":
        # A second jetstream block replaces the one NatsServer writes: repeat store_dir.
        return f'jetstream {{ store_dir: "{store_dir}", max_file_store: {limit} }}'
    return (
        f"accounts {{ SYNC: {{ jetstream: {{ max_file: {limit}, max_mem: 64MB }}, "
        "users: [{ user: sync, password: sync }] } }\n"
        "no_auth_user: sync"
    )


def limited_nats(kind: Limit, limit: str) -> NatsServer:
    """A started nats-server with its file storage capped (module doc); the caller ends it
    with :func:`cleanup`."""
    store_dir = Path(tempfile.mkdtemp(prefix="bridge-nats-full-")) / "store"
    return NatsServer(store_dir=store_dir, config=storage_config(kind, store_dir, limit)).start()


def cleanup(server: NatsServer) -> None:
    """Stop the server and remove its store (NatsServer removes only its own work dir)."""
    server.cleanup()
    if server.store_dir is not None:
        shutil.rmtree(server.store_dir.parent, ignore_errors=True)


async def raise_limit(server: NatsServer, kind: Limit, limit: str, timeout: float = 10.0) -> None:
    """Rewrite the config with ``limit`` and reload it (``SIGHUP``); wait until applied.

    NatsServer has no reload of its own: this rewrites the file its ``start()`` wrote
    and signals its process.
    """
    assert server.store_dir is not None and server._workdir is not None
    assert server._proc is not None, "the server is not running"
    reloads = server.log_text().count("Reloaded server configuration")
    server.config = storage_config(kind, server.store_dir, limit)
    (server._workdir / "nats.conf").write_text(server._config_text())
    server._proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while server.log_text().count("Reloaded server configuration") <= reloads:
        if time.monotonic() > deadline:
            raise AssertionError(f"nats-server did not reload within {timeout}s")
        await asyncio.sleep(0.05)
