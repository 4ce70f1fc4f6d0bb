from __future__ import annotations

from bridge.config import BridgeConfig
from bridge.provisioning.provisioner import stream_drift
from bridge.provisioning.specs import consumer_spec, server_backoff, stream_spec


def test_consumer_json_carries_nanoseconds() -> None:
    cfg = BridgeConfig(app_name="a", destination_app="b", ack_wait=2.0, backoff=(2.0, 5.0, 15.0))
    api = consumer_spec(cfg).to_api()
    assert api["ack_wait"] == 2_000_000_000
    assert api["backoff"] == [2_000_000_000, 5_000_000_000, 15_000_000_000]
    assert api["filter_subject"] == "b.sync.a"
    assert api["durable_name"] == "a-workers"
    assert "deliver_subject" not in api


def test_push_consumer_json() -> None:
    cfg = BridgeConfig(app_name="a", destination_app="b", consumer_mode="push")
    api = consumer_spec(cfg).to_api()
    assert api["deliver_subject"] == "b.sync.a.worker"
    assert api["deliver_group"] == "a-workers"
    assert api["flow_control"] is True


def test_server_backoff_never_shortens_ack_wait() -> None:
    assert server_backoff(30.0, (1.0, 5.0, 60.0)) == (30.0, 30.0, 60.0)


def test_stream_lists_literal_subjects() -> None:
    spec = stream_spec(BridgeConfig(app_name="a", destination_app="b"))
    assert spec.subjects == ("a.sync.b", "b.sync.a", "a.sync.dlq", "b.sync.dlq")
    assert spec.to_api()["duplicate_window"] == 120 * 1_000_000_000


def test_stream_allows_message_ttl_so_dead_letters_outlive_max_age() -> None:
    kept = stream_spec(BridgeConfig(app_name="a", destination_app="b"))
    assert kept.to_api()["allow_msg_ttl"] is True
    following = stream_spec(BridgeConfig(app_name="a", destination_app="b", dlq_retention="stream"))
    assert "allow_msg_ttl" not in following.to_api()  # unknown to servers before 2.11
    without = {**following.to_api(), "duplicate_window": kept.to_api()["duplicate_window"]}
    assert stream_drift(kept, without) == {"allow_msg_ttl": (False, True)}
    assert stream_drift(kept, kept.to_api()) == {}
    # JetStream cannot turn it off again: a stream that has it is no drift for "stream"
    assert stream_drift(following, kept.to_api()) == {}


def test_stream_refuses_new_messages_when_full_instead_of_dropping_old_ones() -> None:
    spec = stream_spec(BridgeConfig(app_name="a", destination_app="b", stream_max_bytes=1 << 30))
    api = spec.to_api()
    assert (api["discard"], api["max_bytes"]) == ("new", 1 << 30)
