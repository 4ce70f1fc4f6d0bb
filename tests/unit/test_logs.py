from __future__ import annotations

import json
import logging
import subprocess
import sys

from bridge.observability.logs import JsonFormatter, TextFormatter, redact


def make_record(**extra: object) -> logging.LogRecord:
    record = logging.LogRecord(
        "bridge.test",
        logging.INFO,
        __file__,
        1,
        "connected to %s",
        ("nats://app:s3cret@127.0.0.1:4222",),
        None,
    )
    record.__dict__.update(extra)
    return record


def test_json_lines_carry_fields_and_no_credentials() -> None:
    line = JsonFormatter().format(
        make_record(
            event_id="e1",
            stream_seq=7,
            password="s3cret",
            servers=["nats://u:s3cret@h:4222"],
            nested={"token": "s3cret", "ok": 1},
        )
    )
    body = json.loads(line)
    assert body["event_id"] == "e1" and body["stream_seq"] == 7 and body["level"] == "info"
    assert "s3cret" not in line
    assert body["password"] == "***" and body["nested"] == {"token": "***", "ok": 1}
    assert body["message"] == "connected to nats://***@127.0.0.1:4222"


def test_text_format_redacts_too() -> None:
    line = TextFormatter().format(make_record(nkey_seed="SUAxyz", attempt=2))
    assert "SUAxyz" not in line and "s3cret" not in line and "attempt=2" in line


def test_redact_leaves_plain_values() -> None:
    assert redact({"subject": "a.sync.b", "n": 3}) == {"subject": "a.sync.b", "n": 3}


def failing_record(level: int = logging.ERROR) -> logging.LogRecord:
    try:
        {}["price"]  # the failure under test
    except KeyError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("bridge.inbox", level, __file__, 1, "handler failed", (),
                               exc_info)  # fmt: skip
    record.__dict__.update(event_id="e1", subject="b.sync.a", deliveries=5)
    return record


def test_a_json_record_with_an_exception_carries_type_message_and_traceback() -> None:
    body = json.loads(JsonFormatter().format(failing_record()))
    assert body["error_type"] == "KeyError" and body["error"] == "'price'"
    assert "Traceback (most recent call last)" in body["traceback"]
    assert "failing_record" in body["traceback"]
    assert body["event_id"] == "e1" and body["deliveries"] == 5


def test_a_text_record_is_one_line_even_with_a_traceback() -> None:
    line = TextFormatter().format(failing_record())
    assert "\n" not in line
    assert "error_type=KeyError" in line and "event_id=e1" in line and "deliveries=5" in line
    assert 'traceback="Traceback (most recent call last):\\n' in line
    assert "error=\"'price'\"" in line


def test_ensure_logging_leaves_an_application_s_own_configuration_alone() -> None:
    code = (
        "import logging, sys\n"
        "from bridge.observability.logs import ensure_logging\n"
        "mine = logging.StreamHandler(sys.stdout)\n"
        "logging.getLogger().addHandler(mine)\n"
        "assert ensure_logging() is False\n"
        "assert logging.getLogger().handlers == [mine]\n"
        "logging.getLogger().handlers.clear()\n"
        "assert ensure_logging() is True and ensure_logging() is False\n"
        "logging.getLogger('bridge.x').warning('hello', extra={'event_id': 'e1'})\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    [line] = result.stderr.splitlines()  # not a terminal: JSON lines
    assert json.loads(line)["event_id"] == "e1"
