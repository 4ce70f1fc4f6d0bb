"""``make demo`` for real: devstack starts NATS + both uvicorn services, runs test_sync.sh.

Each run uses free ports, its own workdir and fresh databases (DATABASE_URL_A/B),
and checks devstack exits with the script's own code after stopping everything.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.testing import PostgresServer, free_port

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT = 150


@pytest.fixture
async def databases(postgres: PostgresServer) -> AsyncIterator[dict[str, str]]:
    urls = [await postgres.create_database() for _ in range(2)]
    yield {"DATABASE_URL_A": urls[0], "DATABASE_URL_B": urls[1]}
    for url in urls:
        await postgres.drop_database(url)


def run_devstack(
    tmp_path: Path, databases: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    # The script passes test_sync.sh's result through and then exits 3, so we can tell
    # devstack really returns the script's own exit code.
    wrapper = tmp_path / "check.sh"
    wrapper.write_text(f'#!/usr/bin/env bash\n"{ROOT}/scripts/test_sync.sh" || exit $?\nexit 3\n')
    wrapper.chmod(0o755)
    env = {**os.environ, **databases, "SYNC_TIMEOUT": "30"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "services.devstack",
            *args,
            "--a-port",
            str(free_port()),
            "--b-port",
            str(free_port()),
            "--nats-port",
            str(free_port()),
            "--workdir",
            str(tmp_path / "devstack"),
            "--run",
            str(wrapper),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def logs(tmp_path: Path) -> str:
    return "\n".join(
        f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
        for p in sorted((tmp_path / "devstack" / "logs").glob("*.log"))
    )


def test_demo_non_restrictive_pull(tmp_path: Path, databases: dict[str, str]) -> None:
    result = run_devstack(
        tmp_path, databases, "--mode", "non_restrictive", "--consumer-mode", "pull"
    )
    assert result.returncode == 3, result.stdout + result.stderr + logs(tmp_path)
    assert "All 10 steps passed." in result.stdout
    assert "devstack: stopped" in result.stdout


def test_demo_restrictive_push(tmp_path: Path, databases: dict[str, str]) -> None:
    result = run_devstack(tmp_path, databases, "--mode", "restrictive", "--consumer-mode", "push")
    assert result.returncode == 3, result.stdout + result.stderr + logs(tmp_path)
    assert "All 10 steps passed." in result.stdout
    assert "provisioning stream" in result.stdout
    # The generated server config holds one user per app besides the admin.
    config = (tmp_path / "devstack" / "restrictive" / "nats-restrictive.conf").read_text()
    assert "system_a" in config and "system_b" in config
