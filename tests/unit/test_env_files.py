"""Env files: what ``make up`` writes under ``.devstack/`` and ``bridge --env-file`` reads.

One vocabulary: the names in the file are the ones the services and the CLI read
(``bridge.env``), so a file written for an app configures the CLI for it.
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
from pathlib import Path

import pytest

from bridge.cli import EXIT_USAGE, main_async
from bridge.env import config_from_env, read_env_file, write_env_file
from bridge.errors import ConfigError

HOSTILE = {
    "APP_NAME": "system_a",
    "DESTINATION_APP": "system_b",
    "DATABASE_URL": "postgresql+asyncpg://u:p%40ss@127.0.0.1:5432/jsb_system_a?ssl=disable",
    "NATS_PASSWORD": 'it\'s a "secret" with $HOME, `ticks`, \\ and spaces',
    "EMPTY": "",
    "EQUALS": "a=b=c",
    "HASH": "value # not a comment",
}


def test_written_file_reads_back_identically_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "system_a.env"
    write_env_file(path, HOSTILE)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it may hold passwords
    assert read_env_file(path) == HOSTILE


def test_written_file_is_also_what_a_shell_sources(tmp_path: Path) -> None:
    path = tmp_path / "system_a.env"
    write_env_file(path, HOSTILE)
    script = f"set -a; . '{path}'; set +a; " + "; ".join(
        f'printf "%s\\0" "${name}"' for name in HOSTILE
    )
    out = subprocess.run(
        ["bash", "-c", script], capture_output=True, check=True, env={"PATH": os.defpath}
    ).stdout
    assert out.decode().split("\0")[:-1] == list(HOSTILE.values())


def test_hand_written_files_comments_export_and_quotes(tmp_path: Path) -> None:
    path = tmp_path / "hand.env"
    path.write_text(
        "# a comment\n\nexport APP_NAME=system_b\nDESTINATION_APP = 'system_a'\n"
        'NATS_URL="nats://127.0.0.1:4223"\n'
    )
    assert read_env_file(path) == {
        "APP_NAME": "system_b",
        "DESTINATION_APP": "system_a",
        "NATS_URL": "nats://127.0.0.1:4223",
    }


@pytest.mark.parametrize(
    "line", ["no equals sign", "1BAD=x", "BAD NAME=x", "OPEN='unterminated", "=value"]
)
def test_malformed_line_names_file_and_line(tmp_path: Path, line: str) -> None:
    path = tmp_path / "bad.env"
    path.write_text(f"APP_NAME=a\n{line}\n")
    with pytest.raises(ConfigError, match=r"bad\.env:2"):
        read_env_file(path)


def test_config_from_a_written_file(tmp_path: Path) -> None:
    path = tmp_path / "system_a.env"
    write_env_file(
        path,
        {
            "APP_NAME": "system_a",
            "DESTINATION_APP": "system_b",
            "NATS_URL": "nats://127.0.0.1:4999",
            "NATS_USER": "system_a",
            "NATS_PASSWORD": "pw",
            "MODE": "restrictive",
        },
    )
    config = config_from_env(read_env_file(path))
    assert config.app_name == "system_a" and config.nats_urls == ("nats://127.0.0.1:4999",)
    assert config.credentials.user == "system_a" and config.credentials.password == "pw"
    assert config.auto_provision is False


async def test_cli_env_file_missing_or_malformed_is_a_usage_error(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    missing = tmp_path / "nope.env"
    code = await main_async(["--env-file", str(missing), "status"], env={}, out=out, err=err)
    assert code == EXIT_USAGE
    assert err.getvalue().count("\n") == 1 and str(missing) in err.getvalue()
    bad = tmp_path / "bad.env"
    bad.write_text("APP_NAME\n")
    err = io.StringIO()
    code = await main_async(["--env-file", str(bad), "status"], env={}, out=out, err=err)
    assert code == EXIT_USAGE and "bad.env:1" in err.getvalue()
