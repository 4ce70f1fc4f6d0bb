"""Permission sets and nats-server config text (pure; the real-server proof is in
tests/integration/test_restrictive*.py)."""

from __future__ import annotations

import pytest

from bridge.config import BridgeConfig, Credentials
from bridge.errors import ConfigError
from bridge.provisioning.permissions import (
    app_permissions,
    render_authorization,
    render_server_config,
)


def cfg(app: str = "system_a", dest: str = "system_b", **kw: object) -> BridgeConfig:
    return BridgeConfig(app_name=app, destination_app=dest, **kw)  # type: ignore[arg-type]


def test_pull_set_is_exact() -> None:
    perms = app_permissions(cfg())
    assert perms.publish == (
        "system_a.sync.system_b",
        "system_a.sync.dlq",
        "$JS.API.CONSUMER.MSG.NEXT.sync-stream.system_a-workers",
        "$JS.ACK.sync-stream.system_a-workers.>",
        "system_b.bridge.reconcile",
        "system_b.bridge.reconcile.reply.>",
    )
    assert perms.subscribe == (
        "_INBOX_system_a.>",
        "system_a.bridge.reconcile system_a-reconcile",
        "system_a.bridge.reconcile.reply.>",
    )


def test_push_set_is_exact_and_has_no_js_api() -> None:
    perms = app_permissions(cfg(consumer_mode="push"))
    assert perms.publish == (
        "system_a.sync.system_b",
        "system_a.sync.dlq",
        "$JS.ACK.sync-stream.system_a-workers.>",
        "$JS.FC.sync-stream.system_a-workers.>",
        "system_b.bridge.reconcile",
        "system_b.bridge.reconcile.reply.>",
    )
    assert perms.subscribe == (
        "system_b.sync.system_a.worker system_a-workers",
        "_INBOX_system_a.>",
        "system_a.bridge.reconcile system_a-reconcile",
        "system_a.bridge.reconcile.reply.>",
    )
    assert not any(s.startswith("$JS.API") for s in perms.publish + perms.subscribe)


def test_each_app_has_its_own_reply_inbox_by_default() -> None:
    """No subscribe entry is shared between the two users of a pair: with a shared
    ``_INBOX.>`` one app could read the other's PubAcks and fetched messages."""
    a, b = cfg(), cfg("system_b", "system_a", consumer_mode="push")
    assert (a.inbox_prefix, b.inbox_prefix) == ("_INBOX_system_a", "_INBOX_system_b")
    assert not set(app_permissions(a).subscribe) & set(app_permissions(b).subscribe)
    assert not any(s.startswith("_INBOX.") for s in app_permissions(a).subscribe)


def test_custom_inbox_custom_deliver_and_no_dlq() -> None:
    perms = app_permissions(
        cfg(
            consumer_mode="push",
            credentials=Credentials(inbox_prefix="_INBOX_custom"),
            delivery_subject="custom.deliver",
            push_consumer_group="grp",
            stream_name="other",
            use_dlq=False,
        )
    )
    assert perms.subscribe[:2] == ("custom.deliver grp", "_INBOX_custom.>")
    assert "system_a.sync.dlq" not in perms.publish
    assert "$JS.ACK.other.system_a-workers.>" in perms.publish


def test_advisories_are_opt_in() -> None:
    assert not any("ADVISORY" in s for s in app_permissions(cfg()).subscribe)
    perms = app_permissions(cfg(), advisories=True)
    assert "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.sync-stream.system_a-workers" in (
        perms.subscribe
    )
    assert "$JS.API.DIRECT.GET.sync-stream" in perms.publish


def test_authorization_block_lists_admin_unrestricted_and_each_app() -> None:
    text = render_authorization(
        [cfg(), cfg("system_b", "system_a", consumer_mode="push")],
        admin_user="admin",
        admin_password='p$w"d',
        app_passwords={"system_a": "pa", "system_b": "pb"},
    )
    assert text.startswith("authorization {")
    assert '{ user: "admin", password: "p$w\\"d" }' in text
    assert 'user: "system_a", password: "pa"' in text
    assert '"system_a.sync.system_b.worker system_b-workers"' in text
    assert text.count("permissions:") == 2


def test_missing_password_duplicate_user_and_line_breaks_are_rejected() -> None:
    apps = [cfg(), cfg("system_b", "system_a")]
    with pytest.raises(ConfigError, match="system_b"):
        render_authorization(
            apps, admin_user="a", admin_password="p", app_passwords={"system_a": "x"}
        )
    with pytest.raises(ConfigError, match="twice"):
        render_authorization(
            apps,
            admin_user="system_a",
            admin_password="p",
            app_passwords={"system_a": "x", "system_b": "y"},
        )
    with pytest.raises(ConfigError, match="line breaks"):
        render_authorization(
            apps,
            admin_user="a",
            admin_password="p\n",
            app_passwords={"system_a": "x", "system_b": "y"},
        )


def test_server_config_includes_listen_and_jetstream_when_asked() -> None:
    text = render_server_config(
        [cfg()],
        admin_user="admin",
        admin_password="pw",
        app_passwords={"system_a": "pa"},
        store_dir="/data/js",
        host="0.0.0.0",
        port=4222,
    )
    assert 'jetstream { store_dir: "/data/js" }' in text
    assert "port: 4222" in text and 'host: "0.0.0.0"' in text
    bare = render_server_config(
        [cfg()], admin_user="admin", admin_password="pw", app_passwords={"system_a": "pa"}
    )
    assert "jetstream" not in bare and "authorization {" in bare
