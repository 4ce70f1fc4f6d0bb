"""Least-privilege NATS permissions for apps in restrictive mode (pure, no I/O).

An app running with ``auto_provision=False`` needs only the subjects its consumer
mode touches at run time; the provisioner (admin credentials) creates and changes
the stream and consumers.  The sets below were measured against nats-server 2.15
(``tests/integration/test_restrictive_minimal.py`` removes each entry in turn and
shows the app's workflow breaking):

pull mode
  publish   ``{A}.sync.{B}``                          publish own changes
            ``{A}.sync.dlq``                          publish own dead letters
            ``$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>``  fetch (pull request)
            ``$JS.ACK.<stream>.<durable>.>``          ack / nak / term / in-progress
  subscribe ``<inbox>.>``                             PubAcks and fetched messages

push mode
  publish   ``{A}.sync.{B}``, ``{A}.sync.dlq``, ``$JS.ACK.<stream>.<durable>.>``
            ``$JS.FC.<stream>.<durable>.>``           answers to flow-control requests
  subscribe ``<deliver subject> <deliver group>``     queue subscription, that group only
            ``<inbox>.>``                             PubAcks

reconciliation (both modes, :mod:`bridge.reconcile.reconciler`)
  publish   ``{B}.bridge.reconcile``                  requests to the peer's responder
            ``{B}.bridge.reconcile.reply.>``          answers to the peer's requests
  subscribe ``{A}.bridge.reconcile {A}-reconcile``    own responder, that queue group only
            ``{A}.bridge.reconcile.reply.>``          answers to this app's requests

Reconciliation requests carry a reply subject under ``{A}.bridge.reconcile.reply``
rather than the connection's inbox: the peer's private inbox is not publishable, and
nats-server's ``allow_responses`` would also let an app answer every message it
receives — measured with 2.15, it makes ``$JS.ACK`` and ``$JS.FC`` unnecessary for
plain acks, i.e. it grants more than reconciliation needs.

``<inbox>`` is the app's own reply-inbox prefix, ``_INBOX_<app>`` unless
:attr:`~bridge.config.Credentials.inbox_prefix` names another
(:attr:`~bridge.config.BridgeConfig.inbox_prefix`; the app's connection uses the
same one): with a shared ``_INBOX.>`` one app could subscribe to the other's
PubAcks and fetched messages.  Nothing in
``$JS.API.>`` is granted except the pull request subject: apps cannot create,
update, delete or even inspect streams and consumers.

Dead letters are published with ``Nats-TTL: never`` (kept past the stream's
``max_age``, :mod:`bridge.routing.letter`); a header needs no grant beyond the DLQ subject.

Not granted by default (operators run these with admin credentials): listing and
replaying dead letters (``$JS.API.DIRECT.GET``/``STREAM.MSG.GET``/``STREAM.MSG.DELETE``,
and publishing on the app's consume subject, the only subject a replay goes to) and the
``$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES`` advisory.  Apps do not need the
advisory: the server never gives up on a consumer the provisioner created, and a
delivery after the last attempt is dead-lettered by the app itself (the reserved
delivery, :func:`bridge.routing.outcomes.decide_exhausted`).  ``advisories=True`` still adds the
advisory subscription and the direct-get request for a deployment that runs
:class:`bridge.consumer.max_deliveries.MaxDeliveriesWatcher` on a consumer with a finite
limit — at the price that a direct get by sequence reads any message of the stream (the peer's
events and dead letters too).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bridge.config import BridgeConfig
from bridge.errors import ConfigError


def inbox_prefix(config: BridgeConfig) -> str:
    """The reply-inbox prefix the app's connection uses (private to the app by default)."""
    return config.inbox_prefix


def msg_next_subject(config: BridgeConfig) -> str:
    """Pull request subject of the app's durable."""
    return f"$JS.API.CONSUMER.MSG.NEXT.{config.stream_name}.{config.subjects.durable}"


def ack_subjects(config: BridgeConfig) -> str:
    """Reply subjects of the app's deliveries (ack, nak, term, in-progress)."""
    return f"$JS.ACK.{config.stream_name}.{config.subjects.durable}.>"


def flow_control_subjects(config: BridgeConfig) -> str:
    """Reply subjects of flow-control requests to the app's push consumer."""
    return f"$JS.FC.{config.stream_name}.{config.subjects.durable}.>"


def max_deliveries_advisory(config: BridgeConfig) -> str:
    """Advisory the server publishes when it gives up on one of the app's messages."""
    return (
        f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{config.stream_name}.{config.subjects.durable}"
    )


@dataclass(frozen=True, slots=True)
class AppPermissions:
    """Publish and subscribe allow lists of one app user; everything else is denied.

    Subscribe entries may carry a queue group after a space (``"subject group"``):
    nats-server then allows only queue subscriptions in that group.
    """

    app: str
    consumer_mode: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """nats-server ``permissions`` block as a mapping."""
        return {
            "publish": {"allow": list(self.publish)},
            "subscribe": {"allow": list(self.subscribe)},
        }


def app_permissions(config: BridgeConfig, *, advisories: bool = False) -> AppPermissions:
    """The minimal permissions of ``config``'s app in its consumer mode."""
    subjects = config.subjects
    publish = [subjects.publish]
    if config.use_dlq:
        publish.append(subjects.dlq)
    subscribe = [f"{inbox_prefix(config)}.>"]
    if config.consumer_mode == "pull":
        publish.append(msg_next_subject(config))
        publish.append(ack_subjects(config))
    else:
        publish.append(ack_subjects(config))
        publish.append(flow_control_subjects(config))
        subscribe.insert(0, f"{config.deliver_subject} {config.deliver_group}")
    publish += [subjects.peer_reconcile, f"{subjects.peer_reconcile_replies}.>"]
    subscribe += [
        f"{subjects.reconcile} {subjects.reconcile_group}",
        f"{subjects.reconcile_replies}.>",
    ]
    if advisories:
        subscribe.append(max_deliveries_advisory(config))
        publish.append(f"$JS.API.DIRECT.GET.{config.stream_name}")
    return AppPermissions(
        app=config.app_name,
        consumer_mode=config.consumer_mode,
        publish=tuple(publish),
        subscribe=tuple(subscribe),
    )


# -- nats-server configuration text ------------------------------------------------
def _quote(value: str, *, what: str) -> str:
    if any(c in value for c in "\n\r\x00"):
        raise ConfigError(f"{what} must not contain line breaks or NUL")
    # nats-server's config parser accepts JSON-style double-quoted strings with
    # backslash escapes; quoting also stops '$' from being read as a variable.
    return json.dumps(value)


def _list(values: Sequence[str]) -> str:
    return "[" + ", ".join(_quote(v, what="subject") for v in values) + "]"


def _rule(allowed: Sequence[str]) -> str:
    # nats-server reads an empty allow list as "no restriction": deny all instead.
    return f"{{ allow: {_list(allowed)} }}" if allowed else '{ deny: [">"] }'


def _user_entry(user: str, password: str, permissions: AppPermissions | None) -> str:
    head = f"user: {_quote(user, what='user')}, password: {_quote(password, what='password')}"
    if permissions is None:
        return f"    {{ {head} }}"
    return (
        f"    {{ {head},\n"
        f"      permissions: {{\n"
        f"        publish: {_rule(permissions.publish)},\n"
        f"        subscribe: {_rule(permissions.subscribe)}\n"
        f"      }} }}"
    )


def render_authorization(
    apps: Sequence[BridgeConfig],
    *,
    admin_user: str,
    admin_password: str,
    app_passwords: Mapping[str, str],
    app_users: Mapping[str, str] | None = None,
    advisories: bool = False,
) -> str:
    """The ``authorization { users = [...] }`` block: admin unrestricted, one user per app.

    The user of each app is ``app_users[app]`` or the app name.  Every app needs a
    password in ``app_passwords``; a missing one raises :class:`ConfigError`.
    """
    if not admin_user or not admin_password:
        raise ConfigError("admin_user and admin_password are required")
    users = [_user_entry(admin_user, admin_password, None)]
    seen = {admin_user}
    for config in apps:
        user = (app_users or {}).get(config.app_name, config.app_name)
        if user in seen:
            raise ConfigError(f"NATS user {user!r} is listed twice")
        seen.add(user)
        password = app_passwords.get(config.app_name)
        if not password:
            raise ConfigError(f"no password for app {config.app_name!r}")
        users.append(_user_entry(user, password, app_permissions(config, advisories=advisories)))
    return "authorization {\n  users = [\n" + "\n".join(users) + "\n  ]\n}\n"


def render_server_config(
    apps: Sequence[BridgeConfig],
    *,
    admin_user: str,
    admin_password: str,
    app_passwords: Mapping[str, str],
    app_users: Mapping[str, str] | None = None,
    store_dir: str | None = None,
    host: str | None = None,
    port: int | None = None,
    server_name: str | None = None,
    advisories: bool = False,
) -> str:
    """A complete nats-server config: listen address and JetStream block (when
    ``store_dir`` is given; leave it out to add your own), then the authorization block.
    """
    lines = [
        "# generated by bridge.provisioning.permissions.render_server_config: "
        "edit the source, not this"
    ]
    if server_name:
        lines.append(f"server_name: {_quote(server_name, what='server_name')}")
    if host:
        lines.append(f"host: {_quote(host, what='host')}")
    if port is not None:
        lines.append(f"port: {int(port)}")
    if store_dir is not None:
        lines.append(f"jetstream {{ store_dir: {_quote(store_dir, what='store_dir')} }}")
    body = render_authorization(
        apps,
        admin_user=admin_user,
        admin_password=admin_password,
        app_passwords=app_passwords,
        app_users=app_users,
        advisories=advisories,
    )
    return "\n".join(lines) + "\n" + body
