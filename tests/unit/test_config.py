from __future__ import annotations

import pytest

from bridge._support.durations import parse_duration, to_nanos
from bridge.config import BridgeConfig, ConsumerOptions, Credentials
from bridge.env import configure_bidirectional, resolve_consumer_mode
from bridge.errors import ConfigError
from bridge.presets import preset


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("1.5m", 90.0), ("250ms", 0.25), ("2h", 7200.0), ("5", 5.0), (3, 3.0)],
)
def test_durations_parse_to_float_seconds(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "abc", "10 parsecs", "-5s", "1.2.3s"])
def test_bad_durations_name_the_option(bad: str) -> None:
    with pytest.raises(ConfigError, match="ack_wait"):
        BridgeConfig(app_name="a", destination_app="b", ack_wait=bad)  # type: ignore[arg-type]


def test_defaults_follow_the_gem() -> None:
    cfg = BridgeConfig(app_name="system_a", destination_app="system_b")
    assert cfg.stream_name == "sync-stream"
    assert cfg.max_deliver == 5
    assert cfg.ack_wait == 30.0
    assert cfg.backoff == (1.0, 5.0, 15.0, 30.0, 60.0)
    assert cfg.consumer_mode == "pull"
    assert cfg.auto_provision and cfg.use_outbox and cfg.use_inbox and cfg.use_dlq
    assert cfg.subjects.publish == "system_a.sync.system_b"
    assert cfg.subjects.consume == "system_b.sync.system_a"
    assert cfg.subjects.dlq == "system_a.sync.dlq"
    assert cfg.subjects.durable == "system_a-workers"
    assert cfg.deliver_subject == "system_b.sync.system_a.worker"
    assert cfg.deliver_group == "system_a-workers"


def test_duration_strings_become_seconds_once() -> None:
    cfg = BridgeConfig(
        app_name="a",
        destination_app="b",
        ack_wait="1.5m",  # type: ignore[arg-type]
        backoff=("250ms", "1s", "2m"),  # type: ignore[arg-type]
    )
    assert cfg.ack_wait == 90.0
    assert cfg.backoff == (0.25, 1.0, 120.0)
    assert to_nanos(cfg.backoff[0]) == 250_000_000


def test_backoff_longer_than_max_deliver_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"len\(backoff\) <= max_deliver"):
        BridgeConfig(app_name="a", destination_app="b", max_deliver=2, backoff=(1.0, 2.0, 3.0))


@pytest.mark.parametrize("name", ["sys.a", "sys*", "a>", "with space", ""])
def test_names_must_be_single_tokens(name: str) -> None:
    with pytest.raises(ConfigError, match="app_name"):
        BridgeConfig(app_name=name, destination_app="b")


def test_same_app_and_destination_rejected() -> None:
    with pytest.raises(ConfigError, match="must differ"):
        BridgeConfig(app_name="a", destination_app="a")


def test_consumer_mode_validated() -> None:
    with pytest.raises(ConfigError, match="consumer_mode"):
        BridgeConfig(app_name="a", destination_app="b", consumer_mode="poll")  # type: ignore[arg-type]


def test_nats_urls_accept_comma_string() -> None:
    cfg = BridgeConfig(
        app_name="a", destination_app="b", nats_urls="nats://h1:4222, nats://h2:4222"
    )  # type: ignore[arg-type]
    assert cfg.nats_urls == ("nats://h1:4222", "nats://h2:4222")
    with pytest.raises(ConfigError, match="scheme"):
        BridgeConfig(app_name="a", destination_app="b", nats_urls=("h1:4222",))


def test_credentials_never_in_repr_and_single_method() -> None:
    creds = Credentials(user="app", password="s3cret")
    assert "s3cret" not in repr(BridgeConfig(app_name="a", destination_app="b", credentials=creds))
    with pytest.raises(ConfigError, match="one auth method"):
        Credentials(user="u", password="p", token="t")
    with pytest.raises(ConfigError, match="password"):
        Credentials(user="u")


def test_consumer_mode_resolution_order() -> None:
    env = {"CONSUMER_MODE": "push", "CONSUMER_MODE_SYSTEM_A": "pull"}
    assert resolve_consumer_mode("system_a", None, env) == "pull"
    assert resolve_consumer_mode("system_b", None, env) == "push"
    assert resolve_consumer_mode("system_b", "pull", env) == "pull"
    assert resolve_consumer_mode("system_b", None, {}) == "pull"


def test_configure_bidirectional_sets_provisioning_from_mode() -> None:
    a = configure_bidirectional("system_a", "system_b", env={})
    b = configure_bidirectional(
        "system_b", "system_a", mode="restrictive", env={"CONSUMER_MODE": "push"}
    )
    assert a.auto_provision and a.consumer_mode == "pull"
    assert not b.auto_provision and b.consumer_mode == "push"
    with pytest.raises(ConfigError, match="unknown option"):
        configure_bidirectional("a", "b", env={}, max_delivr=3)


@pytest.mark.parametrize(
    "name", ["development", "test", "production", "high_throughput", "maximum_reliability"]
)
def test_presets_build_valid_configs(name: str) -> None:
    cfg = preset(name, app_name="a", destination_app="b")
    assert len(cfg.backoff) <= cfg.max_deliver


def test_backoff_for_attempt_caps_at_last_step() -> None:
    cfg = BridgeConfig(app_name="a", destination_app="b")
    assert [cfg.backoff_for(n) for n in (1, 2, 5, 9)] == [1.0, 5.0, 60.0, 60.0]


def test_retry_budget_sums_the_nak_delays_before_the_last_delivery() -> None:
    cfg = BridgeConfig(app_name="a", destination_app="b")
    assert cfg.retry_budget == 1 + 5 + 15 + 30
    assert cfg.retry_budget > cfg.relay.lease  # defaults: a dead relay's lease frees in time
    short = BridgeConfig(app_name="a", destination_app="b", backoff=(0.2,), max_deliver=3)
    assert short.retry_budget == 0.4


def test_dlq_retention_defaults_to_kept_until_handled_and_is_validated() -> None:
    assert BridgeConfig(app_name="a", destination_app="b").dlq_retention == "never"
    assert BridgeConfig(app_name="a", destination_app="b", dlq_retention="stream")
    with pytest.raises(ConfigError, match=r"dlq_retention must be 'never'.*'forever'"):
        BridgeConfig(app_name="a", destination_app="b", dlq_retention="forever")


def test_inbox_retention_shorter_than_the_stream_keeps_messages_is_refused() -> None:
    """An event the stream can still deliver again (consumer re-created or reset, a
    republish) after its inbox record was purged would be applied twice."""
    from bridge.config import ConsumerOptions

    day = 24 * 3600.0
    with pytest.raises(ConfigError, match=r"consumer\.inbox_retention.*stream_max_age") as err:
        BridgeConfig(
            app_name="a", destination_app="b", consumer=ConsumerOptions(inbox_retention=day)
        )
    assert "applied twice" in str(err.value) and "allow_short_inbox_retention" in str(err.value)
    ok = BridgeConfig(
        app_name="a",
        destination_app="b",
        stream_max_age=day,
        consumer=ConsumerOptions(inbox_retention=day),
    )
    assert ok.consumer.inbox_retention == ok.stream_max_age
    # no inbox, or handlers that are idempotent on their own: the operator's call
    BridgeConfig(
        app_name="a",
        destination_app="b",
        use_inbox=False,
        consumer=ConsumerOptions(inbox_retention=1),
    )
    BridgeConfig(
        app_name="a",
        destination_app="b",
        consumer=ConsumerOptions(inbox_retention=1, allow_short_inbox_retention=True),
    )
    # max_age 0 keeps messages for ever: no retention covers it
    with pytest.raises(ConfigError, match="for ever"):
        BridgeConfig(app_name="a", destination_app="b", stream_max_age=0)
    with pytest.raises(ConfigError, match="stream_max_age"):
        BridgeConfig(app_name="a", destination_app="b", stream_max_age=-1)


@pytest.mark.parametrize("bad", [0, -2, 1.5])
def test_stream_max_bytes_is_unlimited_or_positive(bad: object) -> None:
    with pytest.raises(ConfigError, match="stream_max_bytes"):
        BridgeConfig(app_name="a", destination_app="b", stream_max_bytes=bad)  # type: ignore[arg-type]
    assert BridgeConfig(app_name="a", destination_app="b", stream_max_bytes=1024).stream_max_bytes


def test_use_outbox_false_fails_at_construction_saying_what_to_use() -> None:
    # The gem's use_outbox=False publishes after the commit: a crash in between loses the
    # event.  The bridge has no such path, so the option must not be accepted silently.
    with pytest.raises(ConfigError, match="use_outbox=False") as refused:
        BridgeConfig(app_name="a", destination_app="b", use_outbox=False)
    assert "enable_relay=False" in str(refused.value)
    with pytest.raises(ConfigError, match="use_outbox"):
        configure_bidirectional("a", "b", env={}, use_outbox=False)
    assert BridgeConfig(app_name="a", destination_app="b", use_outbox=True).use_outbox


def test_consumer_options_have_no_stop_timeout() -> None:
    # It was never read: Bridge.stop(timeout) is the one deadline (bridge.runtime).
    with pytest.raises(TypeError, match="stop_timeout"):
        ConsumerOptions(stop_timeout=5.0)  # type: ignore[call-arg]


def test_names_longer_than_the_peer_can_store_are_refused() -> None:
    # an envelope's producer must fit the peer's inbox, or every event is malformed there
    with pytest.raises(ConfigError, match="app_name is 65 characters long; at most 64"):
        BridgeConfig(app_name="a" * 65, destination_app="b")
    assert BridgeConfig(app_name="a" * 64, destination_app="b").app_name == "a" * 64
