"""Fixtures of the console's browser tests: one scene and one chromium for the module.

Screenshots go to ``CONSOLE_SCREENSHOTS`` (``docs/img`` regenerates the docs' images:
``CONSOLE_SCREENSHOTS=docs/img .venv/bin/python -m pytest tests/browser``), else to a
temporary directory.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from browser_support import Scene, chromium_path, launch_chromium, start_scene
from playwright.async_api import BrowserContext

from bridge.testing import NatsServer, PostgresServer


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> str:
    target = os.environ.get("CONSOLE_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        return target
    return str(tmp_path_factory.mktemp("console-shots"))


@pytest.fixture(scope="module")
async def scene(
    nats_server: NatsServer, postgres: PostgresServer, shots: str
) -> AsyncIterator[Scene]:
    chromium_path()  # fail at once, with what to do, when the browser is missing
    async with start_scene(postgres, nats_server.url, os.urandom(4).hex(), shots) as running:
        yield running


@pytest.fixture(scope="module")
async def browser(scene: Scene) -> AsyncIterator[BrowserContext]:
    async with launch_chromium() as context:
        yield context


@pytest.fixture
async def fresh(browser: BrowserContext) -> BrowserContext:
    """The browser, signed out (no cookies of an earlier test)."""
    await browser.clear_cookies()
    return browser
