"""Pure parts of the console: quantiles of a histogram window, the ring buffer, SVG
charts, dead-letter views, filters and form sequences, the configuration shown."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from bridge.config import BridgeConfig, Credentials
from bridge.integrations.console.charts import (
    Series,
    format_value,
    grid_steps,
    line_chart,
    nice_max,
)
from bridge.integrations.console.history import History, Sample, quantile
from bridge.integrations.console.letters import LetterFilter, body_text, parse_seqs, view
from bridge.integrations.console.options import ConsoleOptions
from bridge.integrations.console.redact import UNSET, config_rows
from bridge.routing.letter import DeadLetter

INF = float("inf")


def test_quantiles_of_the_observations_between_two_readings() -> None:
    before = ((0.1, 10.0), (1.0, 10.0), (10.0, 10.0), (INF, 10.0))
    after = ((0.1, 10.0), (1.0, 60.0), (10.0, 110.0), (INF, 110.0))  # 50 in (0.1,1], 50 in (1,10]
    assert quantile(0.5, before, after) == pytest.approx(1.0)
    assert quantile(0.25, before, after) == pytest.approx(0.55)
    assert quantile(0.99, before, after) == pytest.approx(1.0 + 9.0 * 0.98)
    assert quantile(0.5, after, after) is None  # nothing observed in the window
    assert quantile(0.5, (), ()) is None
    beyond = ((0.1, 0.0), (1.0, 0.0), (INF, 4.0))
    assert quantile(0.5, (), beyond) == 1.0  # in +Inf: the highest finite bound


def test_history_keeps_the_last_samples_oldest_first() -> None:
    history = History(3)
    for n in range(5):
        history.add(Sample(at=float(n), outbox_pending=float(n)))
    assert len(history) == 3
    assert history.series("outbox_pending") == [(2.0, 2.0), (3.0, 3.0), (4.0, 4.0)]


def test_a_chart_plots_runs_with_gaps_and_escapes_every_text() -> None:
    now = 10_000.0
    points = [(now - 50, 1.0), (now - 40, 2.0), (now - 30, None), (now - 20, 4.0), (now - 5, None)]
    svg = str(line_chart('<b>"x"</b>', [Series("<i>s</i>", '"red', points)],
                         unit="/s", span=60, now=now))  # fmt: skip
    assert 'data-points="3"' in svg
    assert ">-45s<" in svg and ">now<" in svg
    assert ">-45m<" in str(line_chart("t", [], unit="", span=3600, now=now))
    assert svg.count("<polyline") == 1 and svg.count("<circle") == 1  # a run of 2, a lone point
    assert "<b>" not in svg and "<i>" not in svg and '""red' not in svg
    assert "&lt;b&gt;" in svg and "&lt;i&gt;s&lt;/i&gt;: 4.0/s" in svg
    old = [(now - 500, 9.0)]
    empty = str(line_chart("t", [Series("s", "#000", old)], unit="", span=60, now=now))
    assert 'data-points="0"' in empty and "no data yet" in empty


@pytest.mark.parametrize(
    ("value", "top"), [(0, 1.0), (0.7, 1.0), (1.2, 2.0), (2.2, 2.5), (3, 5.0), (7, 10.0),
                       (120, 200.0), (0.03, 0.05), (float("nan"), 1.0)],
)  # fmt: skip
def test_nice_max(value: float, top: float) -> None:
    assert nice_max(value) == pytest.approx(top)


def test_format_value() -> None:
    assert format_value(None, "s") == UNSET
    assert format_value(0.25, "s") == "250 ms"
    assert format_value(3.5, "s") == "3.5 s"
    assert format_value(600, "s") == "10.0 min"
    assert format_value(12.34, "/s") == "12.3/s"
    assert format_value(7.0, "") == "7" and format_value(2.5, "") == "2.5"
    assert format_value(1234.0, "") == "1234"


@pytest.mark.parametrize(("top", "steps"), [(1.0, 4), (2.0, 4), (2.5, 5), (5.0, 5), (250.0, 5),
                                            (0.05, 5), (0.2, 4), (1000.0, 4)])  # fmt: skip
def test_grid_steps_are_round(top: float, steps: int) -> None:
    assert grid_steps(top) == steps


def letter(seq: int = 5, *, data: bytes = b"{}", at: str = "", **headers: str) -> DeadLetter:
    return DeadLetter.from_stored(seq, data, {"x-dlq-reason": "malformed", "x-dlq-at": at,
                                              **headers})  # fmt: skip


def test_a_view_finds_type_and_record_without_parsing_and_reads_the_age() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    body = b'{"event_type": "user.updated", "resource_id": "42", "payload": ' + b"[" * 5000
    shown = view(letter(data=body, at="2025-12-31T23:50:00.000000Z"), now=now, preview_bytes=10)
    assert (shown.event_type, shown.resource_id, shown.reason) == (
        "user.updated",
        "42",
        "malformed",
    )
    assert shown.age_seconds == 600 and shown.preview == body[:10].decode()
    garbled = view(letter(data=b"\xff\xfe", at="yesterday"), now=now, preview_bytes=10)
    assert garbled.age_seconds is None and garbled.event_type == "" and "\ufffd" in garbled.preview


def test_filters_by_reason_type_and_age() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    at = (now - timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%S.000000Z")
    shown = view(letter(data=b'{"event_type":"a.b"}', at=at), now=now, preview_bytes=0)
    unknown_age = view(letter(data=b"{}"), now=now, preview_bytes=0)
    assert LetterFilter.from_query({"reason": "malformed", "type": "a.b"}).matches(shown)
    assert not LetterFilter.from_query({"reason": "other"}).matches(shown)
    assert LetterFilter.from_query({"min_age": "20", "max_age": "40"}).matches(shown)
    assert not LetterFilter.from_query({"min_age": "31"}).matches(shown)
    assert not LetterFilter.from_query({"max_age": "29"}).matches(shown)
    assert not LetterFilter.from_query({"min_age": "0"}).matches(unknown_age)
    bad = LetterFilter.from_query({"min_age": "-1", "max_age": "nan", "start": "²"})
    assert bad.min_age_minutes is None and bad.max_age_minutes is None and bad.start == 1
    assert len(bad.problems) == 3
    assert LetterFilter.from_query({"reason": "x", "min_age": "5"}).query() == {
        "reason": "x", "min_age": "5"}  # fmt: skip


def test_form_sequences() -> None:
    assert parse_seqs(["3", " 4", "3"], limit=5) == [3, 4]
    for bad in (["0"], ["-1"], ["1.5"], ["²"], ["9" * 20], [""], ["1e3"]):
        with pytest.raises(ValueError, match="is not a dead letter's stream sequence"):
            parse_seqs(bad, limit=5)
    with pytest.raises(ValueError, match="at most 2"):
        parse_seqs(["1", "2", "3"], limit=2)


def test_body_text_indents_json_and_shows_anything_else_as_it_is() -> None:
    assert body_text(b'{"a":[1,2]}') == '{\n  "a": [\n    1,\n    2\n  ]\n}'
    deep = b"[" * 100_000 + b"]" * 100_000
    assert body_text(deep) == deep.decode()
    assert body_text(b"<script>") == "<script>"  # escaping is the template's job


def test_the_configuration_shown_hides_every_secret() -> None:
    seed = "SUAM" + "A" * 54
    config = BridgeConfig(
        app_name="a", destination_app="b",
        nats_urls=("nats://alice:pw-secret@n1:4222", "nats://tok-secret@n2:4222"),
        credentials=Credentials(nkey_seed=seed),
    )  # fmt: skip
    rows = dict(config_rows(
        ("", config), ("console.", ConsoleOptions(token="console-secret-0123")),
        extra={"database_url": "postgresql+asyncpg://u:db-secret@h/db"},
    ))  # fmt: skip
    text = repr(rows)
    for secret in ("pw-secret", "tok-secret", seed, "console-secret-0123", "db-secret"):
        assert secret not in text
    assert rows["nats_urls"] == "nats://***@n1:4222, nats://***@n2:4222"
    assert rows["credentials.nkey_seed"] == "***" and rows["console.token"] == "***"
    assert rows["credentials.password"] == UNSET and rows["credentials.user"] == UNSET
    assert rows["relay.batch_size"] == "256" and rows["backoff"] == "1.0, 5.0, 15.0, 30.0, 60.0"
    assert rows["clock"] == "bridge.config.system_clock"
    assert re.fullmatch(r"[a-z, _]+", rows["known_origins"])


@pytest.mark.parametrize(
    ("seconds", "label"),
    [(3600, "hour"), (7200, "2 hours"), (60, "minute"), (300, "5 minutes"), (90, "90 seconds"),
     (1, "second"), (0.5, "0.5 seconds")],
)  # fmt: skip
def test_span_label(seconds: float, label: str) -> None:
    from bridge.integrations.console.pages import span_label

    assert span_label(seconds) == label


async def test_a_page_reads_a_bounded_number_of_body_bytes() -> None:
    from bridge.integrations.console import letters as module

    big = b"x" * (module.SCAN_BYTES // 4 + 1)

    class Store:
        read: list[int] = []

        async def letters(self, *, start_seq: int = 1):  # type: ignore[no-untyped-def]
            for seq in range(start_seq, start_seq + 50):
                self.read.append(seq)
                yield letter(seq, data=big)

    page = await module.letter_page(
        Store(), LetterFilter(), now=datetime.now(UTC), page_size=100, scan_limit=1000,  # type: ignore[arg-type]
        preview_bytes=10,
    )  # fmt: skip
    assert page.scanned == 4 and page.next_start == 5  # just past SCAN_BYTES: the rest waits
