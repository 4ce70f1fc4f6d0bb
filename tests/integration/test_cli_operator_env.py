"""The ``bridge`` command as an operator runs it: ``--env-file`` and admin-only commands.

Against a real nats-server with the restrictive stack's generated users and a real
PostgreSQL database: an env file written the way ``make up`` writes it configures
the CLI, and a command that needs the JetStream API, run with an app's
least-privilege user, fails at once saying admin credentials are needed instead
of waiting for a ``nats: timeout``.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest

from bridge.cli import EXIT_OK, EXIT_UNREACHABLE, main_async
from bridge.env import read_env_file, write_env_file
from bridge.provisioning.provisioner import Provisioner
from bridge.provisioning.specs import consumer_spec, stream_spec
from bridge.testing import NatsServer, free_port
from bridge.transport.jsapi import JetStreamApi
from provisioner.stack import RestrictiveStack, write_restrictive_stack
from services.shared.db import migrate

#: The old behaviour took the JetStream client's 5 s request timeout (5.8 s measured);
#: a denial comes back from the server within one round trip.
PROMPT = 4.0
ADMIN_DOC = "docs/OPERATIONS.md#commands-that-need-admin-credentials"


async def cli(*argv: str, env: dict[str, str]) -> tuple[int, str, str, float]:
    out, err = io.StringIO(), io.StringIO()
    started = time.monotonic()
    code = await main_async(list(argv), env=env, out=out, err=err)
    return code, out.getvalue(), err.getvalue(), time.monotonic() - started


@pytest.fixture
async def restrictive(tmp_path: Path, unique: str) -> AsyncIterator[RestrictiveStack]:
    """A provisioned restrictive stack (pull consumers) on its own nats-server."""
    stack = write_restrictive_stack(
        tmp_path / "stack", apps=(f"a{unique}", f"b{unique}"), port=free_port(),
        stream_name=f"s{unique}",
    )  # fmt: skip
    server = NatsServer(config=stack.authorization, port=stack.port).start()
    try:
        admin = await nats.connect(server.url, user=stack.admin.user, password=stack.admin.password)
        try:
            first, second = stack.pair
            await Provisioner(JetStreamApi(admin)).apply(
                stream_spec(stack.app_config(first)),
                [consumer_spec(stack.app_config(app)) for app in (first, second)],
            )
        finally:
            await admin.close()
        yield stack
    finally:
        server.cleanup()


@pytest.mark.parametrize(
    "argv", [["dlq", "list"], ["dlq", "show", "1"], ["dlq", "purge"], ["provision", "verify"]]
)
async def test_admin_only_command_with_app_credentials_fails_at_once(
    restrictive: RestrictiveStack, argv: list[str]
) -> None:
    app = restrictive.pair[0]
    code, _, err, seconds = await cli(*argv, env=restrictive.app_env(app))
    assert code == EXIT_UNREACHABLE, err
    assert seconds < PROMPT, f"took {seconds:.1f}s: {err}"
    assert err.count("\n") == 1, err  # one line, no traceback
    assert "needs admin credentials" in err and f"NATS user {app!r}" in err
    assert "NATS_USER" in err and ADMIN_DOC in err
    assert restrictive.apps[app].password not in err


async def test_admin_only_command_with_admin_credentials_runs(
    restrictive: RestrictiveStack,
) -> None:
    app = restrictive.pair[0]
    code, out, err, _ = await cli("--json", "dlq", "list", env=restrictive.operator_env(app))
    assert code == EXIT_OK, err
    assert json.loads(out) == []


def test_stack_files_speak_the_cli_and_provisioner_vocabulary(
    restrictive: RestrictiveStack,
) -> None:
    """NATS_USER/NATS_PASSWORD are whoever connects; NATS_PASSWORD_<APP> only feeds
    ``bridge-provision permissions`` (it used to write NATS_ADMIN_*/NATS_USER_<APP>,
    names nothing reads)."""
    first, second = restrictive.pair
    assert read_env_file(restrictive.credentials_path) == {
        "NATS_USER": "admin",
        "NATS_PASSWORD": restrictive.admin.password,
        f"NATS_PASSWORD_{first.upper()}": restrictive.apps[first].password,
        f"NATS_PASSWORD_{second.upper()}": restrictive.apps[second].password,
    }
    operator = restrictive.operator_env(first)
    assert operator["NATS_USER"] == "admin" and operator["APP_NAME"] == first
    assert operator["NATS_PASSWORD"] == restrictive.admin.password
    assert restrictive.app_env(first)["NATS_USER"] == first


async def test_status_with_app_credentials_says_what_it_cannot_read(
    restrictive: RestrictiveStack, database_url: str
) -> None:
    await migrate(database_url)
    app = restrictive.pair[0]
    env = {**restrictive.app_env(app), "DATABASE_URL": database_url}
    code, out, err, _ = await cli("--json", "status", env=env)
    assert code == EXIT_OK, err
    report = json.loads(out)
    assert "needs admin credentials" in report["stream_error"]
    assert report["outbox"]["pending"] == 0  # the rest of the report is still there


async def test_env_file_round_trip_and_precedence(
    restrictive: RestrictiveStack, database_url: str, tmp_path: Path
) -> None:
    """Values of --env-file win over the process environment; a later file wins."""
    await migrate(database_url)
    app = restrictive.pair[0]
    app_file, admin_file = tmp_path / f"{app}.env", tmp_path / f"{app}.admin.env"
    write_env_file(app_file, {**restrictive.app_env(app), "DATABASE_URL": database_url})
    write_env_file(
        admin_file,
        {"NATS_USER": restrictive.admin.user, "NATS_PASSWORD": restrictive.admin.password},
    )
    stray = {  # a shell that still points elsewhere must not win over the file
        "APP_NAME": "someone_else", "DESTINATION_APP": "nobody",
        "DATABASE_URL": "postgresql+asyncpg://postgres@127.0.0.1:1/wrong",
        "NATS_URL": "nats://127.0.0.1:1",
    }  # fmt: skip
    code, out, err, _ = await cli("--env-file", str(app_file), "--json", "outbox", "list",
                                  env=stray)  # fmt: skip
    assert code == EXIT_OK, err
    assert json.loads(out) == []
    code, _, err, _ = await cli("--env-file", str(app_file), "dlq", "list", env=stray)
    assert code == EXIT_UNREACHABLE and "needs admin credentials" in err
    code, out, err, _ = await cli(
        "--env-file", str(app_file), "--env-file", str(admin_file), "--json", "dlq", "list",
        env=stray,
    )  # fmt: skip
    assert code == EXIT_OK, err
    assert json.loads(out) == []
