"""After ``pip install -e`` (what ``make install`` does to the project's virtualenv),
``mypy --strict`` in a user's own project finds ``bridge`` and its types: the editable
install is a plain path entry (mypy does not run import hooks) and ``py.typed`` ships."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

USER_CODE = """\
from bridge import Bridge, Envelope, Router


async def handler(session: object, envelope: Envelope) -> None:
    assert envelope.event_id


def wire(bridge: Bridge) -> Router:
    router: Router = bridge.router
    return router
"""


def test_mypy_strict_in_a_user_project_finds_the_editable_bridge(tmp_path: Path) -> None:
    (tmp_path / "user_app.py").write_text(USER_CODE)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "user_app.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found in 1 source file" in result.stdout
