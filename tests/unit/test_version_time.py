"""Versions from the future and unknown origins (pure rules, config options, local versions)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bridge.config import DEFAULT_MAX_CLOCK_SKEW, BridgeConfig
from bridge.env import configure_bidirectional
from bridge.envelope import Envelope, format_timestamp
from bridge.errors import ConfigError, Reject
from bridge.routing.outcomes import REASON_FUTURE_VERSION, REASON_UNKNOWN_ORIGIN, Action, decide
from bridge.routing.version_time import beyond_skew, check_version_time, refusal
from bridge.sync.versions import ONE_MICROSECOND, FutureVersion, next_updated_at
from services.shared.settings import ServiceSettings

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
FAR_FUTURE = datetime.max.replace(tzinfo=UTC)  # 9999-12-31T23:59:59.999999Z


def config(**overrides: object) -> BridgeConfig:
    return BridgeConfig(app_name="system_b", destination_app="system_a", **overrides)  # type: ignore[arg-type]


def envelope(**overrides: object) -> Envelope:
    values: dict[str, object] = {
        "event_type": "organization.updated",
        "producer": "system_a",
        "resource_type": "organization",
        "resource_id": "1",
        "payload": {},
        "occurred_at": format_timestamp(NOW),
    }
    return Envelope(**{**values, **overrides})  # type: ignore[arg-type]


def test_defaults_know_both_apps_and_allow_five_minutes() -> None:
    cfg = config()
    assert cfg.max_clock_skew == DEFAULT_MAX_CLOCK_SKEW == 300.0
    assert cfg.known_origins == frozenset({"system_a", "system_b"})
    assert cfg.clock().tzinfo is not None


def test_options_are_parsed_and_validated_with_their_name() -> None:
    cfg = config(max_clock_skew="15m", known_origins="legacy_erp, billing")
    assert cfg.max_clock_skew == 900.0
    assert cfg.known_origins == {"system_a", "system_b", "legacy_erp", "billing"}
    assert config(known_origins=frozenset({"crm"})).known_origins == {"system_a", "system_b", "crm"}
    for bad in (0, -1, "0s"):
        with pytest.raises(ConfigError, match="max_clock_skew"):
            config(max_clock_skew=bad)
    with pytest.raises(ConfigError, match="max_clock_skew"):
        config(max_clock_skew="soon")
    for names in ("bad.name", frozenset({""}), frozenset({7})):
        with pytest.raises(ConfigError, match="known_origins"):
            config(known_origins=names)
    with pytest.raises(ConfigError, match="clock"):
        config(clock="now")
    via = configure_bidirectional("system_b", "system_a", env={}, max_clock_skew="1m")
    assert via.max_clock_skew == 60.0


def test_the_clock_is_not_part_of_equality_or_repr() -> None:
    ticking = config(clock=lambda: NOW)
    assert ticking == config() and "clock=" not in repr(ticking)
    assert ticking.with_(max_clock_skew=10).clock() == NOW


def test_the_bound_is_inclusive_and_never_overflows() -> None:
    skew = 300.0
    at_bound = NOW + timedelta(seconds=skew)
    assert not beyond_skew(at_bound, now=NOW, max_clock_skew=skew)
    assert beyond_skew(at_bound + ONE_MICROSECOND, now=NOW, max_clock_skew=skew)
    assert beyond_skew(FAR_FUTURE, now=NOW, max_clock_skew=skew)
    assert not beyond_skew(datetime.min.replace(tzinfo=UTC), now=NOW, max_clock_skew=skew)
    check_version_time(at_bound, now=NOW, max_clock_skew=skew)
    with pytest.raises(Reject) as raised:
        check_version_time(FAR_FUTURE, now=NOW, max_clock_skew=skew, what="payload updated_at")
    assert raised.value.reason == REASON_FUTURE_VERSION
    assert "payload updated_at 9999-12-31T23:59:59.999999Z" in str(raised.value)
    decision = decide(raised.value, num_delivered=1, config=config())
    assert (decision.action, decision.reason) == (Action.DEAD_LETTER, REASON_FUTURE_VERSION)


def test_refusal_of_envelopes() -> None:
    cfg = config(clock=lambda: NOW)
    assert refusal(envelope(), cfg) is None
    assert refusal(envelope(producer="system_b"), cfg) is None  # a re-emit of our own
    ahead = format_timestamp(NOW + timedelta(minutes=4))
    assert refusal(envelope(occurred_at=ahead), cfg) is None
    cases = {
        "origin 'mallory'": envelope(origin="mallory"),
        "producer 'mallory'": envelope(producer="mallory", origin="system_a"),
        "origin 'eve'": envelope(producer="eve"),  # no origin: the producer stands for it
    }
    for text, env in cases.items():
        refused = refusal(env, cfg)
        assert refused is not None and refused.reason == REASON_UNKNOWN_ORIGIN, text
        assert text in str(refused) and "system_a, system_b" in str(refused)
    refused = refusal(envelope(occurred_at="9999-12-31T23:59:59.999999Z"), cfg)
    assert refused is not None and refused.reason == REASON_FUTURE_VERSION
    assert "occurred_at" in str(refused)
    later = config(clock=lambda: NOW + timedelta(hours=1))  # the clock fixed: it passes
    assert (
        refusal(envelope(occurred_at=format_timestamp(NOW + timedelta(minutes=30))), later) is None
    )


def test_local_versions_never_overflow_on_a_stored_future_version() -> None:
    with pytest.raises(FutureVersion, match=r"9999-12-31T23:59:59\.999999Z"):
        next_updated_at(FAR_FUTURE, NOW)
    with pytest.raises(FutureVersion):  # a timestamptz 'infinity' as asyncpg reads it
        next_updated_at(datetime.max, NOW)
    with pytest.raises(FutureVersion):
        next_updated_at(NOW + timedelta(minutes=6), NOW)
    within = NOW + timedelta(minutes=4)
    assert next_updated_at(within, NOW) == within + ONE_MICROSECOND
    assert next_updated_at(NOW + timedelta(minutes=6), NOW, max_clock_skew=900) > NOW


def test_service_settings_pass_the_options_on() -> None:
    settings = ServiceSettings(app_name="system_b", destination_app="system_a")
    cfg = settings.to_bridge_config(env={"MAX_CLOCK_SKEW": "15m", "KNOWN_ORIGINS": "erp"})
    assert cfg.max_clock_skew == 900.0
    assert cfg.known_origins == {"system_a", "system_b", "erp"}
    default = ServiceSettings(app_name="system_b", destination_app="system_a")
    assert default.to_bridge_config(env={}).max_clock_skew == DEFAULT_MAX_CLOCK_SKEW
