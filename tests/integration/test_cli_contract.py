"""The command lines' contract (docs/OPERATIONS.md, "Exit codes"): ``--json`` (and
``--env-file``, ``--log-level``) before or after the subcommand in both CLIs, and exit
codes true to their meaning — 2 for usage and configuration (a missing ``DATABASE_URL``,
models that cannot be reconciled), 3 only when NATS or the database cannot be reached or
refuses the connection, 1 when something is missing (the bridge's tables) — each with
one line saying what to do."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from bridge.cli import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, build_parser, main_async
from bridge.cli.provision import build_parser as provision_parser
from bridge.cli.provision import main_async as provision_main
from bridge.schema import create_all
from bridge.testing import NatsServer, PostgresServer, free_port, replace_database, to_async_url

SUBCOMMANDS = [
    ["status"], ["outbox", "list"], ["dlq", "list"], ["provision", "verify"], ["doctor"],
    ["backfill"], ["reconcile"],
]  # fmt: skip


async def bridge_cli(env: dict[str, str], *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = await main_async(list(argv), env=env, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


async def provision_cli(env: dict[str, str], *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = await provision_main(list(argv), env=env, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def env_for(nats_url: str, database_url: str, unique: str) -> dict[str, str]:
    return {
        "APP_NAME": f"cli{unique}", "DESTINATION_APP": f"peer{unique}",
        "STREAM_NAME": f"cli{unique}", "NATS_URL": nats_url, "DATABASE_URL": database_url,
    }  # fmt: skip


@pytest.mark.parametrize("command", SUBCOMMANDS, ids=" ".join)
def test_every_bridge_subcommand_takes_the_global_options_before_or_after(
    command: list[str],
) -> None:
    parser = build_parser()
    before = parser.parse_args(["--json", "--env-file", "a.env", *command])
    after = parser.parse_args([*command, "--json", "--env-file", "a.env", "--log-level", "debug"])
    assert before.json is True and after.json is True
    assert before.env_file == ["a.env"] and after.env_file_after == ["a.env"]
    assert after.log_level == "debug" and parser.parse_args(command).json is False


@pytest.mark.parametrize("command", ["plan", "apply", "verify", "permissions"])
def test_every_bridge_provision_subcommand_takes_json_before_or_after(command: str) -> None:
    parser = provision_parser()
    assert parser.parse_args(["--json", command]).json is True
    assert parser.parse_args([command, "--json"]).json is True
    assert parser.parse_args([command]).json is False


async def test_status_json_after_the_subcommand_runs(
    nats_server: NatsServer, database_url: str, unique: str
) -> None:
    engine = create_async_engine(database_url)
    await create_all(engine)
    await engine.dispose()
    env = env_for(nats_server.url, database_url, unique)
    for argv in (["status", "--json"], ["--json", "status"]):
        code, out, err = await bridge_cli(env, *argv)
        assert code == EXIT_OK, err
        assert json.loads(out)["app"] == f"cli{unique}"


async def test_bridge_provision_verify_json_before_the_subcommand(
    nats_server: NatsServer, unique: str
) -> None:
    env = {"APPS": f"a{unique},b{unique}", "NATS_URL": nats_server.url,
           "STREAM_NAME": f"s{unique}"}  # fmt: skip
    for argv in (["--json", "verify"], ["verify", "--json"]):
        code, out, _ = await provision_cli(env, *argv)
        assert code == EXIT_FAILED  # nothing provisioned yet: drift, reported as JSON
        assert isinstance(json.loads(out), dict | list)


async def test_a_missing_database_url_is_a_configuration_error_not_unreachable(
    nats_server: NatsServer, unique: str
) -> None:
    env = env_for(nats_server.url, "", unique)
    del env["DATABASE_URL"]
    code, _, err = await bridge_cli(env, "status")
    assert code == EXIT_USAGE
    assert err.count("\n") == 1 and "DATABASE_URL" in err


async def test_an_absent_database_is_unreachable_in_one_line(
    nats_server: NatsServer, postgres: PostgresServer, unique: str
) -> None:
    absent = to_async_url(replace_database(postgres.admin_url, f"absent_{unique}"))
    code, out, err = await bridge_cli(env_for(nats_server.url, absent, unique), "status")
    assert code == EXIT_UNREACHABLE and out == ""
    assert err.count("\n") == 1, err
    assert f"absent_{unique}" in err and "does not exist" in err and "DATABASE_URL" in err


async def test_a_database_port_with_nothing_listening_is_unreachable(
    nats_server: NatsServer, unique: str
) -> None:
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/x"
    code, _, err = await bridge_cli(env_for(nats_server.url, url, unique), "outbox", "list")
    assert code == EXIT_UNREACHABLE
    assert err.count("\n") == 1 and "refused" in err and "DATABASE_URL" in err


async def test_missing_bridge_tables_say_how_to_create_them(
    nats_server: NatsServer, database_url: str, unique: str
) -> None:
    code, _, err = await bridge_cli(env_for(nats_server.url, database_url, unique), "status")
    assert code == EXIT_FAILED
    assert err.count("\n") == 1, err
    assert "bridge_outbox" in err and "migrations" in err and "create_all" in err


async def test_models_that_cannot_be_reconciled_are_a_configuration_error(
    nats_server: NatsServer,
    database_url: str,
    unique: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = f"cli_models_{unique}"
    (tmp_path / f"{module}.py").write_text(
        "from sqlalchemy import String\n"
        "from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column\n"
        "from bridge import Synced\n"
        "class Base(DeclarativeBase):\n"
        "    pass\n"
        "class Note(Synced, Base):\n"
        "    __tablename__ = 'notes'\n"
        "    __bridge_resource__ = 'note'\n"
        "    __bridge_reconcile__ = True\n"
        "    sku: Mapped[str] = mapped_column(String(20), primary_key=True)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    env = env_for(nats_server.url, database_url, unique)
    code, _, err = await bridge_cli(env, "reconcile", "--models", module, "--json")
    assert code == EXIT_USAGE, err
    assert err.startswith("bridge reconcile: configuration error: ") and "notes" in err
    assert "version column 'updated_at'" in err  # a text key is fine; the versions lack
    sys.modules.pop(module, None)


async def test_nats_with_nothing_listening_is_unreachable_naming_the_cause(
    database_url: str, unique: str
) -> None:
    code, _, err = await bridge_cli(
        env_for(f"nats://127.0.0.1:{free_port()}", database_url, unique), "doctor"
    )
    assert code == EXIT_UNREACHABLE
    assert "connection refused" in err and "NATS_URL" in err
