"""``make up`` / ``make demo`` for real: devstack starts NATS + both uvicorn services.

The demos use free ports, their own workdir and fresh databases (DATABASE_URL_A/B),
run test_sync.sh and then the ``bridge`` CLI with the env files devstack wrote, and
check devstack exits with the script's own code after stopping everything.

The hazard tests run devstack with its *default* database names against an
embedded PostgreSQL in the test's own directory (``BRIDGE_EMBEDDED_PG=1``), so
they never touch the databases of this machine's shared server, and through
``make up`` with the make variables a user would type.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from bridge.env import read_env_file
from bridge.testing import PostgresServer, free_port, replace_database, to_plain_url

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT = 150
#: A refusal happens before anything starts: far below a stack's start-up time.
REFUSAL_TIMEOUT = 60
#: What a foreign application left in a database named like devstack's.
FOREIGN_SQL = "CREATE TABLE invoices (id int PRIMARY KEY, total numeric)"


@pytest.fixture
async def databases(postgres: PostgresServer) -> AsyncIterator[dict[str, str]]:
    urls = [await postgres.create_database() for _ in range(2)]
    yield {"DATABASE_URL_A": urls[0], "DATABASE_URL_B": urls[1]}
    for url in urls:
        await postgres.drop_database(url)


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any database or devstack setting of the caller."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL_A", "DATABASE_URL_B", "BRIDGE_TEST_DATABASE_URL",
                     "DATABASE_ADMIN_URL", "BRIDGE_EMBEDDED_PG")
    }  # fmt: skip
    env.update(extra)
    return env


def run(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in its own process group; on timeout the whole group is killed, so no
    service or server outlives a failed test."""
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        raise AssertionError(f"{cmd} still running after {timeout}s:\n{out}\n{err}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def devstack(
    workdir: Path, env: dict[str, str], *args: str, timeout: float = RUN_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    return run(
        [sys.executable, "-m", "services.devstack", "--a-port", str(free_port()),
         "--b-port", str(free_port()), "--nats-port", str(free_port()),
         "--workdir", str(workdir), *args],
        env, timeout,
    )  # fmt: skip


def make(
    target: str, workdir: Path, env: dict[str, str], *variables: str, timeout: float = RUN_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """``make up`` / ``make demo`` as a user types it, on free ports, in ``workdir``."""
    ports = [f"{name}={free_port()}" for name in ("A_PORT", "B_PORT", "NATS_PORT")]
    return run(
        ["make", "--no-print-directory", target, *ports, f"DEVSTACK_DIR={workdir}", *variables],
        env, timeout,
    )  # fmt: skip


def wrapper_script(tmp_path: Path, extra: str = "") -> Path:
    """test_sync.sh, then ``extra``, then exit 3: devstack must pass the script's own code on."""
    wrapper = tmp_path / "check.sh"
    wrapper.write_text(
        f'#!/usr/bin/env bash\n"{ROOT}/scripts/test_sync.sh" || exit $?\n{extra}\nexit 3\n'
    )
    wrapper.chmod(0o755)
    return wrapper


def logs(workdir: Path) -> str:
    return "\n".join(
        f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
        for p in sorted((workdir / "logs").glob("*.log"))
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """devstack's stderr when it refuses: exactly one line, no traceback (through make,
    make's own "Error 1" line follows it)."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("make")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("devstack: error: ")
    return lines[0]


# -- the demos (make demo), with the env files and the bridge CLI ----------------------
BRIDGE = f"{sys.executable} -m bridge.cli"


def test_demo_non_restrictive_pull(tmp_path: Path, databases: dict[str, str]) -> None:
    workdir = tmp_path / "devstack"
    status = tmp_path / "status.json"
    script = wrapper_script(
        tmp_path,
        f'{BRIDGE} --env-file "{workdir}/system_a.env" --json status > "{status}" || exit 9',
    )
    env = clean_env(**databases, SYNC_TIMEOUT="30")
    result = devstack(workdir, env, "--mode", "non_restrictive", "--consumer-mode", "pull",
                      "--run", str(script))  # fmt: skip
    assert result.returncode == 3, result.stdout + result.stderr + logs(workdir)
    assert "All 10 steps passed." in result.stdout
    assert "devstack: stopped" in result.stdout
    # The env file holds the names the CLI reads; with it `bridge status` saw this stack.
    values = read_env_file(workdir / "system_a.env")
    assert values["DATABASE_URL"].endswith(databases["DATABASE_URL_A"].rsplit("/", 1)[1])
    assert values["APP_NAME"] == "system_a" and values["NATS_URL"].startswith("nats://")
    report = json.loads(status.read_text())
    assert report["app"] == "system_a" and report["nats"]["connected"] is True
    assert report["consumer"]["name"] == "system_a-workers" and "stream_error" not in report
    assert f"--env-file {workdir}/system_a.env" in result.stdout  # the banner says how


def test_demo_restrictive_push(tmp_path: Path, databases: dict[str, str]) -> None:
    workdir = tmp_path / "devstack"
    denied, listed = tmp_path / "denied.txt", tmp_path / "listed.json"
    script = wrapper_script(
        tmp_path,
        f'{BRIDGE} --env-file "{workdir}/system_b.env" dlq list 2> "{denied}" && exit 8\n'
        f'{BRIDGE} --env-file "{workdir}/system_b.admin.env" --json dlq list > "{listed}" '
        "|| exit 9",
    )
    env = clean_env(**databases, SYNC_TIMEOUT="30")
    result = devstack(workdir, env, "--mode", "restrictive", "--consumer-mode", "push",
                      "--run", str(script))  # fmt: skip
    assert result.returncode == 3, result.stdout + result.stderr + logs(workdir)
    assert "All 10 steps passed." in result.stdout
    assert "provisioning stream" in result.stdout
    # The generated server config holds one user per app besides the admin.
    config = (workdir / "restrictive" / "nats-restrictive.conf").read_text()
    assert "system_a" in config and "system_b" in config
    # One vocabulary: the app's file holds its own user as NATS_USER/NATS_PASSWORD ...
    app_values = read_env_file(workdir / "system_b.env")
    assert app_values["NATS_USER"] == "system_b" and app_values["NATS_PASSWORD"]
    assert app_values["MODE"] == "restrictive"
    # ... with which an admin-only command says at once what it needs,
    message = denied.read_text()
    assert "needs admin credentials" in message and "system_b.admin.env" in message
    # ... and the admin file runs it.
    assert json.loads(listed.read_text()) == []
    assert read_env_file(workdir / "system_b.admin.env")["NATS_USER"] == "admin"


# -- databases: own by default, never a foreign one ------------------------------------
@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A devstack workdir whose embedded PostgreSQL the test can prepare first."""
    workdir = tmp_path / "devstack"
    workdir.mkdir()
    yield workdir, clean_env(BRIDGE_EMBEDDED_PG="1")


async def with_embedded_server(workdir: Path, database: str, sql: str | None) -> str:
    """Create ``database`` (running ``sql`` in it) in the embedded server devstack will use."""
    server = PostgresServer(data_dir=workdir / "postgres", env={"BRIDGE_EMBEDDED_PG": "1"})
    try:
        url = await server.create_database(database)
        if sql:
            conn = await asyncpg.connect(to_plain_url(url))
            try:
                await conn.execute(sql)
            finally:
                await conn.close()
        return url
    finally:
        server.cleanup()


async def table_names(workdir: Path, database: str) -> set[str]:
    server = PostgresServer(data_dir=workdir / "postgres", env={"BRIDGE_EMBEDDED_PG": "1"})
    try:
        conn = await asyncpg.connect(replace_database(server.admin_url, database))
        try:
            rows = await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
        finally:
            await conn.close()
    finally:
        server.cleanup()
    return {row["table_name"] for row in rows}


async def test_default_database_holding_foreign_tables_is_refused(
    embedded: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    workdir, env = embedded
    await with_embedded_server(workdir, "jsb_system_a", FOREIGN_SQL)
    line = one_line_error(make("up", workdir, env, timeout=REFUSAL_TIMEOUT))
    assert "jsb_system_a" in line and "invoices" in line
    assert "DATABASE_URL_A" in line and "DROP DATABASE" in line
    assert await table_names(workdir, "jsb_system_a") == {"invoices"}  # nothing migrated


async def test_default_names_leave_an_existing_system_a_alone(
    embedded: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """A database called ``system_a`` (the old default) with someone's tables: ``make
    demo`` (make up + test_sync.sh + down) runs on its own ``jsb_system_a`` and never
    migrates into ``system_a``."""
    workdir, env = embedded
    await with_embedded_server(workdir, "system_a", FOREIGN_SQL)
    result = make("demo", workdir, {**env, "SYNC_TIMEOUT": "30"})
    assert result.returncode == 0, result.stdout + result.stderr + logs(workdir)
    assert "All 10 steps passed." in result.stdout
    assert "own databases jsb_system_a, jsb_system_b" in result.stdout
    assert await table_names(workdir, "system_a") == {"invoices"}
    assert {"alembic_version", "bridge_outbox", "organizations"} <= await table_names(
        workdir, "jsb_system_a"
    )


async def test_missing_given_database_is_one_line_with_the_log(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    missing = {
        "DATABASE_URL_A": replace_database(postgres.admin_url, "jsb_no_such_db_a"),
        "DATABASE_URL_B": replace_database(postgres.admin_url, "jsb_no_such_db_b"),
    }
    workdir = tmp_path / "devstack"
    result = devstack(workdir, clean_env(**missing), timeout=REFUSAL_TIMEOUT)
    line = one_line_error(result)
    assert "jsb_no_such_db_a" in line and "does not exist" in line and "DATABASE_URL_A" in line
    log = workdir / "logs" / "devstack.log"
    assert str(log) in line and "Traceback" in log.read_text()  # the details are kept


def test_only_one_database_url_is_refused(tmp_path: Path, databases: dict[str, str]) -> None:
    workdir = tmp_path / "devstack"
    env = clean_env(DATABASE_URL_A=databases["DATABASE_URL_A"], BRIDGE_EMBEDDED_PG="1")
    line = one_line_error(devstack(workdir, env, timeout=REFUSAL_TIMEOUT))
    assert "DATABASE_URL_A" in line and "DATABASE_URL_B" in line


# -- ports, through make -----------------------------------------------------------------
@pytest.mark.parametrize("variable", ["A_PORT", "B_PORT", "NATS_PORT"])
def test_make_up_with_a_busy_port_names_the_variable(
    variable: str, tmp_path: Path, databases: dict[str, str]
) -> None:
    ports = {"A_PORT": free_port(), "B_PORT": free_port(), "NATS_PORT": free_port()}
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        ports[variable] = busy.getsockname()[1]
        result = run(
            ["make", "--no-print-directory", "up",
             *(f"{name}={port}" for name, port in ports.items()),
             f"DEVSTACK_DIR={tmp_path / 'devstack'}"],
            clean_env(**databases), REFUSAL_TIMEOUT,
        )  # fmt: skip
    assert result.returncode != 0, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("devstack:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert str(ports[variable]) in errors[0] and f"{variable}=" in errors[0]
