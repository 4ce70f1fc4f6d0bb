"""Service settings: environment → BridgeConfig (through bridge.env), imports side-effect free."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from bridge.errors import ConfigError
from services.shared.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[2]


def test_environment_builds_the_bridge_config(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "APP_NAME": "system_b",
        "DESTINATION_APP": "system_a",
        "NATS_URLS": "nats://n1:4222, nats://n2:4222",
        "NATS_USER": "system_b",
        "NATS_PASSWORD": "s3cret",
        "MODE": "restrictive",
        "STREAM_NAME": "orders",
        "MAX_DELIVER": "7",
        "ACK_WAIT": "45s",
        "BACKOFF": "1s,2s,4s",
        "PORT": "3101",
        "CONSUMER_MODE_SYSTEM_B": "push",
    }.items():
        monkeypatch.setenv(name, value)
    settings = ServiceSettings()
    config = settings.to_bridge_config()  # the process environment, read by bridge.env
    assert (config.app_name, config.destination_app, config.stream_name) == (
        "system_b",
        "system_a",
        "orders",
    )
    assert config.nats_urls == ("nats://n1:4222", "nats://n2:4222")
    assert config.auto_provision is False  # restrictive: verify only
    assert config.consumer_mode == "push"  # CONSUMER_MODE_<APP> when CONSUMER_MODE is unset
    assert (config.max_deliver, config.ack_wait, config.backoff) == (7, 45.0, (1.0, 2.0, 4.0))
    assert config.credentials.user == "system_b" and config.credentials.password == "s3cret"
    assert settings.port == 3101
    assert "s3cret" not in repr(settings) and "s3cret" not in repr(config)


def test_consumer_mode_order_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    # CONSUMER_MODE_<APP>, then CONSUMER_MODE, then pull: the order the CLI and the
    # provisioner use (the service used to put CONSUMER_MODE first).
    monkeypatch.setenv("CONSUMER_MODE", "push")
    settings = ServiceSettings(app_name="system_a", destination_app="system_b")
    assert settings.to_bridge_config().consumer_mode == "push"
    assert (
        settings.to_bridge_config(
            env={"CONSUMER_MODE_SYSTEM_A": "pull", "CONSUMER_MODE": "push"}
        ).consumer_mode
        == "pull"
    )
    config = settings.to_bridge_config(env={})
    assert config.consumer_mode == "pull" and config.auto_provision is True
    assert config.nats_urls == ("nats://127.0.0.1:4222",)


def test_invalid_values_fail_at_construction() -> None:
    with pytest.raises(ConfigError):
        ServiceSettings(app_name="sys.a", destination_app="b").to_bridge_config(env={})
    with pytest.raises(ConfigError):
        ServiceSettings(app_name="a", destination_app="b").to_bridge_config(
            env={"NATS_USER": "u", "NATS_PASSWORD": "p", "NATS_TOKEN": "t"}
        )
    with pytest.raises(ValidationError, match="nats_url"):  # the bridge's, not the service's
        ServiceSettings(nats_url="nats://elsewhere:4222")  # type: ignore[call-arg]


def test_importing_the_services_connects_to_nothing() -> None:
    # Any socket connect while importing and building both apps fails the import.
    code = (
        "import socket\n"
        "def refuse(*args, **kwargs):\n"
        "    raise AssertionError(f'connection attempted: {args!r}')\n"
        "socket.socket.connect = socket.socket.connect_ex = refuse\n"
        "socket.create_connection = refuse\n"
        "import services.system_a.main as a, services.system_b.main as b\n"
        "print(a.app.title, '|', b.app.title)\n"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "NATS_URL": "nats://127.0.0.1:1",
        "DATABASE_URL": "postgresql+asyncpg://nobody@127.0.0.1:1/none",
    }
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "system_a" in result.stdout and "system_b" in result.stdout
