"""docs/asyncapi/ holds what the services serve at /asyncapi.json: the committed documents
equal what scripts/write_asyncapi.py generates, and a service's route (the library's
router over the service's bridge) serves exactly that document."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from catalog_support import asyncapi_errors
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import create_async_engine

from bridge import config_from_env
from bridge.integrations.fastapi import bridge_router
from services.shared.app import build_bridge
from services.shared.status import operations_router

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "write_asyncapi.py"


def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("write_asyncapi", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_documents_are_the_generated_ones() -> None:
    generated = script().documents()
    assert sorted(generated) == ["system_a.json", "system_b.json"]
    for name, text in generated.items():
        committed = (ROOT / "docs" / "asyncapi" / name).read_text(encoding="utf-8")
        assert committed == text, f"docs/asyncapi/{name} is stale: run scripts/write_asyncapi.py"
        assert asyncapi_errors(json.loads(committed)) == []


def test_the_check_mode_names_a_stale_document(tmp_path: Path) -> None:
    writer = script()
    assert writer.main(["--out", str(tmp_path)]) == 0  # writes both
    assert writer.main(["--check", "--out", str(tmp_path)]) == 0
    (tmp_path / "system_b.json").write_text("{}\n", encoding="utf-8")
    assert writer.main(["--check", "--out", str(tmp_path)]) == 1
    assert (tmp_path / "system_b.json").read_text(encoding="utf-8") == "{}\n"  # check only


@pytest.mark.parametrize(("app", "peer"), [("system_a", "system_b"), ("system_b", "system_a")])
async def test_a_service_serves_its_committed_catalog(app: str, peer: str) -> None:
    engine = create_async_engine("postgresql+asyncpg://nobody@127.0.0.1:1/never_connected")
    service = FastAPI()
    service.include_router(operations_router(sync_enabled=True))
    service.state.bridge = build_bridge(
        config_from_env({}, app_name=app, destination_app=peer), engine
    )
    transport = httpx.ASGITransport(app=service)
    async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
        response = await client.get("/asyncapi.json")
    await engine.dispose()
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    committed = json.loads((ROOT / "docs" / "asyncapi" / f"{app}.json").read_text("utf-8"))
    assert response.json() == committed


async def test_the_library_router_serves_the_catalog_only_when_asked() -> None:
    engine = create_async_engine("postgresql+asyncpg://nobody@127.0.0.1:1/never_connected")
    app = FastAPI()
    app.include_router(bridge_router(prefix="/plain"))
    app.include_router(bridge_router(prefix="/ops", asyncapi=True))
    app.state.bridge = build_bridge(
        config_from_env({}, app_name="system_a", destination_app="system_b"), engine
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        assert (await client.get("/plain/asyncapi.json")).status_code == 404
        served = await client.get("/ops/asyncapi.json")
    await engine.dispose()
    assert served.status_code == 200
    assert served.json()["channels"]["published"]["address"] == "system_a.sync.system_b"
