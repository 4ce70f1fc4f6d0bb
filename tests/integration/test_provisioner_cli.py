"""bridge-provision against real nats-servers, driven in-process (plus one real
``python -m provisioner`` run for the entry point)."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from bridge.testing import NatsServer, free_port
from bridge.transport.jsapi import JetStreamApi
from provisioner.cli import main_async
from provisioner.stack import write_restrictive_stack

ROOT = Path(__file__).resolve().parents[2]


def pair_env(server: NatsServer, unique: str, **extra: str) -> dict[str, str]:
    return {
        "NATS_URL": server.url,
        "STREAM_NAME": f"s{unique}",
        "APPS": f"a{unique},b{unique}",
        **extra,
    }


async def run(*argv: str, env: dict[str, str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = await main_async(list(argv), env=env, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


async def test_plan_apply_verify_round_trip(nats_server: NatsServer, unique: str) -> None:
    env = pair_env(
        nats_server, unique, CONSUMER_MODE="pull", **{f"CONSUMER_MODE_B{unique.upper()}": "push"}
    )
    code, out, _ = await run("plan", env=env)
    assert code == 0
    assert f"create_stream s{unique}" in out
    assert f"create_consumer s{unique}/a{unique}-workers" in out
    assert f"create_consumer s{unique}/b{unique}-workers" in out

    code, out, _ = await run("verify", env=env)
    assert code == 1
    assert f"MISSING stream s{unique}" in out

    code, out, _ = await run("apply", env=env)
    assert code == 0 and "applied:" in out

    code, out, _ = await run("verify", env=env)
    assert code == 0 and out.startswith("OK:")
    assert f"b{unique}-workers (push)" in out and f"a{unique}-workers (pull)" in out

    code, out, _ = await run("apply", env=env)
    assert code == 0 and "no changes" in out


async def test_drift_makes_verify_fail_naming_the_field(
    nats_server: NatsServer, nc: Client, unique: str
) -> None:
    env = pair_env(nats_server, unique, MAX_DELIVER="5", ACK_WAIT="30s", BACKOFF="1s 5s")
    assert (await run("apply", env=env))[0] == 0
    # An operator changes a field the bridge owns.
    api = JetStreamApi(nc)
    durable = f"a{unique}-workers"
    current = (await api.consumer_info(f"s{unique}", durable))["config"]
    await api.save_consumer(f"s{unique}", {**current, "max_deliver": 9}, action="update")

    code, out, _ = await run("verify", env=env)
    assert code == 1
    # The server redelivers without limit; the bridge counts attempts (reserved delivery).
    assert f"DRIFT consumer s{unique}/{durable}: max_deliver: 9 (want -1)" in out

    code, out, _ = await run("verify", "--json", env=env)
    report = json.loads(out)
    assert code == 1 and report["ok"] is False
    (problem,) = report["problems"]
    assert problem["target"] == f"s{unique}/{durable}"
    assert problem["fields"]["max_deliver"] == {"actual": 9, "desired": -1}

    code, out, _ = await run("plan", "--json", env=env)
    plan = json.loads(out)
    assert code == 0 and plan["in_sync"] is False
    assert plan["changes"][0]["kind"] == "update_consumer"

    # Flags override the environment: verify compares against --ack-wait, not ACK_WAIT.
    code, out, _ = await run("verify", "--ack-wait", "45s", env=env)
    assert code == 1 and "ack_wait: 30.0 (want 45.0)" in out
    assert (await run("apply", env=env))[0] == 0
    assert (await run("verify", env=env))[0] == 0


async def test_a_stream_without_message_ttl_is_drift_and_apply_enables_it(
    nats_server: NatsServer, nc: Client, unique: str
) -> None:
    """Dead letters are kept past max_age only on a stream with per-message TTL: a
    stream provisioned before (or with DLQ_RETENTION=stream) is reported and fixed."""
    env = pair_env(nats_server, unique)
    assert (await run("apply", "--dlq-retention", "stream", env=env))[0] == 0
    assert (await run("verify", env={**env, "DLQ_RETENTION": "stream"}))[0] == 0

    code, out, _ = await run("verify", env=env)
    assert code == 1
    assert f"DRIFT stream s{unique}: allow_msg_ttl: False (want True)" in out

    code, out, _ = await run("apply", env=env)
    assert code == 0 and "allow_msg_ttl" in out
    info = await JetStreamApi(nc).stream_info(f"s{unique}")
    assert info["config"]["allow_msg_ttl"] is True
    assert (await run("verify", env=env))[0] == 0
    assert (await run("verify", env={**env, "DLQ_RETENTION": "stream"}))[0] == 0
    code, _, err = await run("verify", env={**env, "DLQ_RETENTION": "forever"})
    assert code == 2 and "dlq_retention" in err


async def test_connection_failure_and_usage_errors(unique: str) -> None:
    port = free_port()
    env = {"NATS_URL": f"nats://admin:s3cret@127.0.0.1:{port}", "APPS": "a,b"}
    code, out, err = await run("verify", "--connect-timeout", "0.5", env=env)
    assert code == 3 and out == ""
    assert f"127.0.0.1:{port}" in err and "s3cret" not in err

    code, _, err = await run("verify", env={"MAX_DELIVER": "many"})
    assert code == 2 and "MAX_DELIVER" in err
    code, _, err = await run("plan", env={"APPS": "only_one"})
    assert code == 2 and "two" in err
    with pytest.raises(SystemExit) as exit_info:
        await run("frobnicate", env={})
    assert exit_info.value.code == 2


async def test_app_credentials_cannot_provision(tmp_path: Path, unique: str) -> None:
    stack = write_restrictive_stack(
        tmp_path, apps=(f"a{unique}", f"b{unique}"), port=free_port(), stream_name=f"s{unique}"
    )
    with NatsServer(config=stack.authorization, port=stack.port) as server:
        app_env = {**stack.admin_env(), "NATS_URLS": server.url}
        app_env["NATS_USER"], app_env["NATS_PASSWORD"] = (
            f"a{unique}",
            stack.apps[f"a{unique}"].password,
        )
        code, _, err = await run("plan", "--request-timeout", "0.5", env=app_env)
        assert code == 3 and "may not manage JetStream" in err

        code, out, _ = await run("apply", env={**stack.admin_env(), "NATS_URLS": server.url})
        assert code == 0, out
        code, out, _ = await run("verify", env={**stack.admin_env(), "NATS_URLS": server.url})
        assert code == 0, out


async def test_permissions_output_runs_a_real_server(tmp_path: Path, unique: str) -> None:
    a, b = f"a{unique}", f"b{unique}"
    creds = tmp_path / "creds.env"
    conf = tmp_path / "auth.conf"
    env = {"APPS": f"{a},{b}", "STREAM_NAME": f"s{unique}", "NATS_USER": "admin"}
    code, _, err = await run("permissions", "--format", "authorization", "-o", str(conf), env=env)
    assert code == 2 and "no password" in err
    code, _, err = await run(
        "permissions",
        "--format",
        "authorization",
        "-o",
        str(conf),
        "--generate-passwords",
        "--credentials-out",
        str(creds),
        "--consumer-mode-for",
        f"{b}=push",
        env=env,
    )
    assert code == 0, err
    for path in (conf, creds):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    passwords = dict(line.split("=", 1) for line in creds.read_text().splitlines())
    assert set(passwords) == {
        "NATS_PASSWORD_ADMIN",
        f"NATS_PASSWORD_{a.upper()}",
        f"NATS_PASSWORD_{b.upper()}",
    }
    with NatsServer(config=conf.read_text()) as server:
        client = await nats.connect(
            server.url, user=a, password=passwords[f"NATS_PASSWORD_{a.upper()}"]
        )
        await client.close()
        admin = await nats.connect(
            server.url, user="admin", password=passwords["NATS_PASSWORD_ADMIN"]
        )
        await admin.close()

    code, out, _ = await run("permissions", "--json", "--consumer-mode-for", f"{b}=push", env=env)
    sets = {u["user"]: u for u in json.loads(out)["users"]}
    assert sets[a]["subscribe"]["allow"] == [
        f"_INBOX_{a}.>",  # its own reply inbox: never shared with the peer
        f"{a}.bridge.reconcile {a}-reconcile",
        f"{a}.bridge.reconcile.reply.>",
    ]
    assert sets[b]["subscribe"]["allow"][0] == f"{a}.sync.{b}.worker {b}-workers"


def test_python_dash_m_entry_point(nats_server: NatsServer, unique: str) -> None:
    env = {**os.environ, **pair_env(nats_server, unique)}
    result = subprocess.run(
        [sys.executable, "-m", "provisioner", "verify", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert json.loads(result.stdout)["ok"] is False


def test_restrictive_stack_files_and_environments(tmp_path: Path) -> None:
    stack = write_restrictive_stack(tmp_path, consumer_modes={"system_b": "push"}, port=free_port())
    assert stack.consumer_modes == {"system_a": "pull", "system_b": "push"}
    for path in (stack.config_path, stack.credentials_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    check = subprocess.run(
        [*stack.nats_server_command(), "-t"], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stderr
    admin = stack.admin_env()
    assert admin["NATS_USER"] == "admin" and admin["CONSUMER_MODE_SYSTEM_B"] == "push"
    app = stack.app_env("system_b")
    assert app["NATS_USER"] == "system_b" and app["MODE"] == "restrictive"
    assert app["CONSUMER_MODE"] == "push" and app["DESTINATION_APP"] == "system_a"
    assert stack.apps["system_b"].password in stack.credentials_path.read_text()
    assert stack.apps["system_b"].password not in repr(stack)
    cfg = stack.app_config("system_b")
    assert cfg.auto_provision is False and cfg.consumer_mode == "push"
    assert stack.provision_command()[-2:] == ["provisioner", "apply"]
