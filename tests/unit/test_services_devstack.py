"""devstack's pure parts: the environment each service process gets, ports, arguments."""

from __future__ import annotations

import socket

import pytest

from services.devstack import (
    AppSpec,
    DevstackError,
    app_environment,
    build_parser,
    check_ports,
    choose_nats_port,
    env_file_values,
    port_free,
)
from services.devstack_db import foreign_tables, our_tables


def test_app_environment_sets_identity_and_mode() -> None:
    app = AppSpec("system_a", "system_b", 3000, "postgresql+asyncpg://h/system_a")
    base = {"PATH": "/bin", "CONSUMER_MODE_SYSTEM_A": "push", "NATS_URLS": "nats://elsewhere:1"}
    env = app_environment(
        app,
        base=base,
        mode="non_restrictive",
        consumer_mode="pull",
        nats_url="nats://127.0.0.1:4222",
    )
    assert env["APP_NAME"] == "system_a" and env["DESTINATION_APP"] == "system_b"
    assert env["DATABASE_URL"] == "postgresql+asyncpg://h/system_a"
    assert env["NATS_URL"] == "nats://127.0.0.1:4222" and "NATS_URLS" not in env
    assert env["MODE"] == "non_restrictive" and env["CONSUMER_MODE"] == "pull"
    assert "CONSUMER_MODE_SYSTEM_A" not in env  # the command line decides the mode
    assert env["PORT"] == "3000" and env["PATH"] == "/bin"
    assert env["BRIDGE_MODELS"] == "services.shared.models"  # for `bridge backfill`
    assert base["CONSUMER_MODE_SYSTEM_A"] == "push"  # the parent's mapping is untouched


def test_restrictive_credentials_override() -> None:
    app = AppSpec(
        "system_b", "system_a", 3101, "postgresql+asyncpg://h/system_b",
        env={"NATS_USER": "system_b", "NATS_PASSWORD": "pw", "MODE": "restrictive"},
    )  # fmt: skip
    env = app_environment(
        app, base={}, mode="restrictive", consumer_mode="push", nats_url="nats://127.0.0.1:4222"
    )
    assert env["NATS_USER"] == "system_b" and env["NATS_PASSWORD"] == "pw"
    assert app.command()[-4:] == ["--host", "127.0.0.1", "--port", "3101"]
    assert "services.system_b.main:app" in app.command()


def test_busy_nats_port_is_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        busy = sock.getsockname()[1]
        assert not port_free(busy)
        with pytest.raises(DevstackError, match=str(busy)):
            choose_nats_port(busy)
    assert choose_nats_port(None) > 0


def test_parser_defaults_and_choices() -> None:
    args = build_parser().parse_args([])
    assert (args.mode, args.consumer_mode, args.run) == ("non_restrictive", "pull", None)
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--mode", "sloppy"])
    assert exc.value.code == 2


def test_help_documents_databases_ports_and_env_files(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    for needle in (
        "DATABASE_URL_A", "DATABASE_URL_B", "jsb_system_a", "jsb_system_b",
        "A_PORT", "B_PORT", "NATS_PORT", "system_a.env", "--env-file",
    ):  # fmt: skip
        assert needle in text, needle


@pytest.mark.parametrize(
    ("flag", "variable"),
    [("--a-port", "A_PORT"), ("--b-port", "B_PORT"), ("--nats-port", "NATS_PORT")],
)
def test_a_busy_port_names_the_make_variable_and_the_flag(flag: str, variable: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        busy = sock.getsockname()[1]
        args = build_parser().parse_args([flag, str(busy)])
        with pytest.raises(DevstackError) as exc:
            check_ports(args)
    message = str(exc.value)
    assert str(busy) in message and f"{variable}=" in message and flag in message
    assert "\n" not in message


def test_foreign_tables_are_whatever_the_services_and_the_bridge_do_not_define() -> None:
    ours = our_tables()
    assert {"organizations", "users", "bridge_outbox", "bridge_inbox", "alembic_version"} <= ours
    existing = [("public", "organizations"), ("public", "invoices"), ("billing", "users")]
    assert foreign_tables(existing) == ["billing.users", "invoices"]
    assert foreign_tables([("public", name) for name in ours]) == []


def test_env_file_values_are_the_app_environment_without_the_parent_one() -> None:
    app = AppSpec(
        "system_a", "system_b", 3100, "postgresql+asyncpg://h/jsb_system_a",
        env={"NATS_USER": "system_a", "NATS_PASSWORD": "pw", "MODE": "restrictive"},
    )  # fmt: skip
    values = env_file_values(
        app, mode="restrictive", consumer_mode="pull", nats_url="nats://127.0.0.1:4222"
    )
    assert values["APP_NAME"] == "system_a" and values["DESTINATION_APP"] == "system_b"
    assert values["DATABASE_URL"] == "postgresql+asyncpg://h/jsb_system_a"
    assert values["NATS_USER"] == "system_a" and values["NATS_PASSWORD"] == "pw"
    assert "PATH" not in values and "HOME" not in values
