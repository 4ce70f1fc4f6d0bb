"""Restrictive mode end to end: a nats-server with the generated least-privilege users,
the provisioner run with admin credentials, and both services running with their own
app users (``auto_provision=False``) — pull, push, and mixed modes, both directions."""

from __future__ import annotations

import io
import subprocess
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import nats
import pytest
from e2e_support import Side, eventually, start_side
from sqlalchemy import text
from test_e2e_sync import crud_crosses

from bridge.errors import MissingConsumerError, MissingStreamError
from bridge.testing import PostgresServer, free_port
from bridge.testing.servers import _wait_port
from bridge.transport.jsapi import JetStreamApi
from provisioner.cli import main_async as provisioner_main
from provisioner.stack import RestrictiveStack, write_restrictive_stack


@pytest.fixture
def server_factory() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        proc.terminate()
        proc.wait(10)


def start_stack(
    tmp_path: Path, unique: str, modes: dict[str, str], procs: list[subprocess.Popen[bytes]]
) -> RestrictiveStack:
    apps = (f"a{unique}", f"b{unique}")
    stack = write_restrictive_stack(
        tmp_path, apps, {apps[0]: modes["a"], apps[1]: modes["b"]}, port=free_port(),
        stream_name=f"r-{unique}",
    )  # fmt: skip
    proc = subprocess.Popen(stack.nats_server_command(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    procs.append(proc)
    _wait_port(stack.host, stack.port, 15.0, proc)
    return stack


async def provision(stack: RestrictiveStack) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = await provisioner_main(["apply"], env=stack.admin_env(), stdout=out, stderr=err)
    assert code == 0, err.getvalue()


@pytest.mark.parametrize(
    "modes",
    [{"a": "pull", "b": "pull"}, {"a": "push", "b": "push"}, {"a": "pull", "b": "push"}],
    ids=["pull", "push", "mixed"],
)
async def test_sync_both_ways_with_least_privilege_users(
    tmp_path: Path,
    postgres: PostgresServer,
    unique: str,
    modes: dict[str, str],
    server_factory: list[subprocess.Popen[bytes]],
) -> None:
    stack = start_stack(tmp_path, unique, modes, server_factory)
    await provision(stack)
    async with AsyncExitStack() as exits:
        sides = []
        for me in stack.pair:
            app_config = stack.app_config(me)
            side = await start_side(
                exits, postgres, name=me, peer=stack.peer_of(me), stream=stack.stream_name,
                nats_url=stack.url, consumer_mode=app_config.consumer_mode,
                auto_provision=False, credentials=app_config.credentials,
            )  # fmt: skip
            sides.append(side)
        a, b = sides
        assert not a.config.auto_provision and a.config.credentials.user == a.name
        await crud_crosses(a, b, f"ra-{unique}")
        await crud_crosses(b, a, f"rb-{unique}")
        if modes["a"] != modes["b"]:  # once: reconciliation with the app users' permissions
            await reconcile_repairs_a_hand_edit(a, b)


async def reconcile_repairs_a_hand_edit(a: Side, b: Side) -> None:
    async with b.state.engine.begin() as conn:
        await conn.execute(text("UPDATE organizations SET name = 'hand edit'"))
    bridge = a.state.bridge
    assert bridge is not None
    report = await bridge.reconciler().run()
    assert report.error is None and report.rows_repaired >= 1

    async def same() -> bool:
        return await a.rows("organizations") == await b.rows("organizations")

    await eventually(same, what="the hand edit repaired")
    assert not [e for e in bridge.connection.permission_errors if "reconcile" in e]


async def test_missing_stream_or_consumer_fails_start_naming_it(
    tmp_path: Path,
    postgres: PostgresServer,
    unique: str,
    server_factory: list[subprocess.Popen[bytes]],
) -> None:
    stack = start_stack(tmp_path, unique, {"a": "pull", "b": "pull"}, server_factory)
    me = stack.pair[0]
    app_config = stack.app_config(me)

    async def start() -> None:
        async with AsyncExitStack() as exits:
            await start_side(
                exits, postgres, name=me, peer=stack.peer_of(me), stream=stack.stream_name,
                nats_url=stack.url, auto_provision=False, credentials=app_config.credentials,
            )  # fmt: skip

    # Nothing provisioned yet: the stream is named.
    with pytest.raises(MissingStreamError, match=stack.stream_name):
        await start()
    # Provisioned, then an operator deleted this app's consumer: the consumer is named.
    await provision(stack)
    admin = await nats.connect(stack.url, user=stack.admin.user, password=stack.admin.password)
    try:
        await JetStreamApi(admin).delete_consumer(stack.stream_name, f"{me}-workers")
    finally:
        await admin.close()
    started = time.monotonic()
    with pytest.raises(MissingConsumerError, match=f"{me}-workers"):
        await start()
    assert time.monotonic() - started < 15
