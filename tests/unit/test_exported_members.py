"""The public API is ``bridge.__all__``: exactly these names, each importable from
``bridge`` and documented; importing it has no side effects."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import bridge

ROOT = Path(__file__).resolve().parents[2]

EXPORTED = [
    "Bridge",
    "BridgeConfig",
    "BridgeError",
    "ConfigError",
    "ConsumerOptions",
    "Credentials",
    "Envelope",
    "EventSchemas",
    "HandlerCall",
    "LastWriterWins",
    "ReconcileOptions",
    "Reject",
    "RelayOptions",
    "Retry",
    "Router",
    "Synced",
    "SyncedTable",
    "bridge_lifespan",
    "check_version_time",
    "config_from_env",
    "configure_bidirectional",
    "preset",
    "skip_publish",
]


def test_the_exact_list_of_exported_names() -> None:
    assert bridge.__all__ == EXPORTED


def test_every_exported_name_is_importable_and_documented() -> None:
    namespace: dict[str, object] = {}
    exec(f"from bridge import {', '.join(EXPORTED)}", namespace)
    for name in EXPORTED:
        member = namespace[name]
        assert member is getattr(bridge, name)
        assert inspect.isclass(member) or inspect.isfunction(member), name
        doc = member.__doc__ or ""
        # its own docstring, not a dataclass's generated signature
        assert doc.strip() and not doc.startswith(f"{name}("), f"{name} has no docstring"
        assert member.__module__.startswith("bridge."), name
        # defined in a public module: no private module exports through the API
        assert not any(part.startswith("_") for part in member.__module__.split(".")), name


def test_the_package_docstring_names_every_export() -> None:
    doc = bridge.__doc__ or ""
    missing = [name for name in EXPORTED if name not in doc]
    assert missing == []


def test_importing_bridge_connects_to_nothing_and_starts_nothing() -> None:
    code = (
        "import socket, sys, threading\n"
        "def refuse(*args, **kwargs):\n"
        "    raise AssertionError(f'connection attempted: {args!r}')\n"
        "socket.socket.connect = socket.socket.connect_ex = refuse\n"
        "socket.create_connection = refuse\n"
        "import bridge\n"
        "assert threading.active_count() == 1, threading.enumerate()\n"
        "assert 'fastapi' not in sys.modules, 'bridge imports its integrations lazily'\n"
        "print(len(bridge.__all__))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(len(EXPORTED))
