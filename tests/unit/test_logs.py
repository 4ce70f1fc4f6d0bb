from __future__ import annotations

import json
import logging

from bridge.observability.logs import JsonFormatter, TextFormatter, redact


def make_record(**extra: object) -> logging.LogRecord:
    record = logging.LogRecord("bridge.test", logging.INFO, __file__, 1, "connected to %s",
                               ("nats://app:s3cret@127.0.0.1:4222",), None)
    record.__dict__.update(extra)
    return record


def test_json_lines_carry_fields_and_no_credentials() -> None:
    line = JsonFormatter().format(
        make_record(event_id="e1", stream_seq=7, password="s3cret",
                    servers=["nats://u:s3cret@h:4222"], nested={"token": "s3cret", "ok": 1})
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
