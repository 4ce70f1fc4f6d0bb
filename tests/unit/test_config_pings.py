"""``ping_interval`` / ``max_outstanding_pings``: how soon a silently dead NATS
connection is noticed (the behaviour itself: ``tests/faults/test_nats_dead_link.py``)."""

from __future__ import annotations

import pytest

from bridge.config import BridgeConfig
from bridge.errors import ConfigError


def test_defaults_notice_a_dead_connection_within_15_seconds() -> None:
    cfg = BridgeConfig(app_name="a", destination_app="b")
    assert (cfg.ping_interval, cfg.max_outstanding_pings) == (5.0, 2)
    assert cfg.ping_interval * (cfg.max_outstanding_pings + 1) == 15.0


def test_ping_interval_accepts_durations() -> None:
    cfg = BridgeConfig(app_name="a", destination_app="b", ping_interval="500ms")
    assert cfg.ping_interval == 0.5


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("ping_interval", 0),
        ("ping_interval", "-1s"),
        ("ping_interval", "soon"),
        ("max_outstanding_pings", 0),
        ("max_outstanding_pings", -1),
    ],
)
def test_invalid_values_name_the_option(option: str, value: object) -> None:
    with pytest.raises(ConfigError, match=option):
        BridgeConfig(app_name="a", destination_app="b", **{option: value})  # type: ignore[arg-type]
