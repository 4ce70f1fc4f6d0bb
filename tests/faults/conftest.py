"""Fixtures of the fault-injection suite (``make test-faults``; ``-m smoke`` for the short one).

- ``results_dir``: where each scenario writes ``<scenario>.json`` (``FAULTS_RESULTS_DIR``,
  default ``build/faults``); ``python scripts/reliability_report.py`` renders them.
- ``seed``: the load's random seed (``FAULTS_SEED`` to replay a run; else time-based),
  logged and stored in the result file.
- ``own_nats``: a nats-server of the test's own, which it may kill, stop and restart.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.testing import NatsServer

ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger("tests.faults")


def pytest_configure(config: pytest.Config) -> None:
    # Also declared in pyproject.toml; repeated so this folder runs on its own too.
    config.addinivalue_line("markers", "faults: fault-injection scenarios (long)")
    config.addinivalue_line("markers", "smoke: the short fault-injection subset make test runs")


@pytest.fixture(scope="session")
def results_dir() -> Path:
    path = Path(os.environ.get("FAULTS_RESULTS_DIR", ROOT / "build" / "faults"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def seed() -> int:
    value = int(os.environ.get("FAULTS_SEED") or int(time.time() * 1000) % 1_000_000)
    log.warning("fault scenario seed %s (replay with FAULTS_SEED=%s)", value, value)
    return value


@pytest.fixture
def own_nats() -> Iterator[NatsServer]:
    server = NatsServer().start()
    yield server
    server.cleanup()
