"""Logs a user gets without configuring anything: the FastAPI integration configures
logging by default (one JSON object per line when the output is not a terminal).  The
issue's handler bug — ``handler failed`` x5 and ``dead-lettered`` with no exception,
no traceback, no event id — now shows, on every line, the event id, subject and
delivery count, the exception's type and message, and on the dead letter (ERROR) the
traceback down to the user's function."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bridge.testing import NatsServer

PROGRAM = Path(__file__).with_name("handler_bug_program.py")


def run_program(env: dict[str, str]) -> tuple[str, list[dict[str, Any]]]:
    result = subprocess.run(
        [sys.executable, str(PROGRAM)], env=env, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not one JSON record per line: {line!r}") from None
    return result.stdout.strip(), records


def test_a_handler_bug_logs_the_exception_event_and_traceback_by_default(
    nats_server: NatsServer, database_url: str, unique: str
) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CONSUMER_MODE")},
        "NATS_URL": nats_server.url, "DATABASE_URL": database_url,
        "STREAM_NAME": f"logs{unique}", "APP": f"shop{unique}", "PEER": f"stock{unique}",
    }  # fmt: skip
    event_id, records = run_program(env)
    subject = f"stock{unique}.sync.shop{unique}"
    failed = [r for r in records if r["message"] == "handler failed"]
    assert [r["deliveries"] for r in failed] == [1, 2, 3]
    for record in failed:
        assert record["level"] == "warning"
        assert record["event_id"] == event_id and record["subject"] == subject
        assert record["error_type"] == "ZeroDivisionError"
        assert record["error"] == "float division by zero"
        assert "traceback" not in record  # at DEBUG only, and on the dead letter
    [letter] = [r for r in records if r["message"] == "dead-lettered"]
    assert letter["level"] == "error"
    assert letter["event_id"] == event_id and letter["subject"] == subject
    assert letter["deliveries"] == 3 and letter["reason"] == "max_deliver_exceeded"
    assert letter["error_type"] == "ZeroDivisionError"
    assert "in parse_price" in letter["traceback"] and "ZeroDivisionError" in letter["traceback"]
