"""One environment reader (bridge.env.config_from_env): the services, their workers, the
``bridge`` CLI and the provisioner turn the same variables into the same config."""

from __future__ import annotations

import pytest

from bridge.cli._pair import load_settings
from bridge.env import config_from_env
from bridge.errors import ConfigError
from bridge.provisioning.specs import consumer_spec, stream_spec
from services.shared.settings import ServiceSettings

#: An app's environment with every variable the bridge reads set away from its default.
ENV = {
    "APP_NAME": "system_b",
    "DESTINATION_APP": "system_a",
    "NATS_URLS": "nats://n1:4222, nats://n2:4222",
    "NATS_USER": "system_b",
    "NATS_PASSWORD": "s3cret",
    "NATS_INBOX_PREFIX": "_INBOX_b",
    "STREAM_NAME": "orders",
    "MODE": "restrictive",
    "CONSUMER_MODE_SYSTEM_B": "push",
    "MAX_DELIVER": "7",
    "ACK_WAIT": "45s",
    "BACKOFF": "1s,2s,4s",
    "RECONCILE_INTERVAL": "10m",
    "DLQ_RETENTION": "stream",
    "MAX_CLOCK_SKEW": "15m",
    "KNOWN_ORIGINS": "erp",
    "ENABLE_RELAY": "false",
    "ENABLE_CONSUMER": "true",
}


def test_every_variable_reaches_the_config() -> None:
    config = config_from_env(ENV)
    assert (config.app_name, config.destination_app, config.stream_name) == (
        "system_b",
        "system_a",
        "orders",
    )
    assert config.nats_urls == ("nats://n1:4222", "nats://n2:4222")
    assert config.credentials.user == "system_b" and config.credentials.password == "s3cret"
    assert config.inbox_prefix == "_INBOX_b"
    assert config.auto_provision is False and config.consumer_mode == "push"
    assert (config.max_deliver, config.ack_wait, config.backoff) == (7, 45.0, (1.0, 2.0, 4.0))
    assert config.reconcile.interval_seconds == 600.0
    assert config.dlq_retention == "stream"
    assert config.max_clock_skew == 900.0
    assert config.known_origins == {"system_a", "system_b", "erp"}
    assert config.enable_relay is False and config.enable_consumer is True
    assert "s3cret" not in repr(config)


def test_the_service_and_the_cli_read_the_same_config() -> None:
    # The service used to ignore DLQ_RETENTION, and the CLI (and workers' tools)
    # MAX_CLOCK_SKEW, KNOWN_ORIGINS and ENABLE_*: one process of an app saw another config.
    service = ServiceSettings(app_name="system_b", destination_app="system_a")
    assert service.to_bridge_config(env=ENV) == config_from_env(ENV)


def test_the_provisioner_derives_the_apps_topology_from_the_same_variables() -> None:
    settings = load_settings({**ENV, "APPS": "system_a,system_b"})
    by_app = {config.app_name: config for config in settings.app_configs()}
    app = config_from_env(ENV)
    assert stream_spec(by_app["system_b"]) == stream_spec(app)
    assert consumer_spec(by_app["system_b"]) == consumer_spec(app)


@pytest.mark.parametrize(
    ("name", "value"),
    [("MAX_DELIVER", "seven"), ("ENABLE_RELAY", "perhaps"), ("MODE", "lenient")],
)
def test_a_bad_value_names_its_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        config_from_env({**ENV, name: value})


def test_app_and_peer_are_required_unless_given() -> None:
    with pytest.raises(ConfigError, match="APP_NAME"):
        config_from_env({})
    config = config_from_env({}, app_name="a", destination_app="b")
    assert (config.app_name, config.destination_app) == ("a", "b")
