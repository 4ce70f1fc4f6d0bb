"""Files for a local restrictive-mode stack (``make up MODE=restrictive``).

:func:`write_restrictive_stack` writes a complete nats-server config (listen
address, JetStream store, ``authorization`` block with an unrestricted admin and
one least-privilege user per app) plus a ``credentials.env`` file (mode 0600)
into ``workdir`` and returns everything a launcher needs.  The order to start a
stack is:

1. ``stack.nats_server_command()`` (or ``NatsServer(config=stack.authorization,
   port=stack.port)`` from :mod:`bridge.testing`),
2. ``stack.provision_command()`` with ``env=stack.admin_env()`` — creates the
   stream and both consumers with the admin user,
3. each app with ``env=stack.app_env(app)`` — app users can only verify.

One vocabulary, the one the services and the ``bridge`` CLI read
(:mod:`bridge.env`): ``NATS_USER`` / ``NATS_PASSWORD`` are the user a
process connects as — the app's own in :meth:`RestrictiveStack.app_env`, the
admin in :meth:`RestrictiveStack.admin_env` and :meth:`RestrictiveStack.operator_env`
(an app's environment for the commands that need the JetStream API, ``bridge
dlq ...``).  ``credentials.env`` is what ``bridge-provision`` reads: the admin as
``NATS_USER`` / ``NATS_PASSWORD`` and each app's password as ``NATS_PASSWORD_<APP>``
(the input of ``bridge-provision permissions``).

Nothing here reads the environment or starts a process.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bridge import BridgeConfig, ConfigError, Credentials, configure_bidirectional
from bridge.env import write_env_file
from bridge.provisioning.permissions import render_authorization, render_server_config
from bridge.testing import nats_server_binary

CONFIG_NAME = "nats-restrictive.conf"
CREDENTIALS_NAME = "credentials.env"


@dataclass(frozen=True, slots=True)
class StackUser:
    """A NATS user of the stack; ``repr()`` hides the password."""

    user: str
    password: str = field(repr=False)
    inbox_prefix: str | None = None

    def credentials(self) -> Credentials:
        return Credentials(user=self.user, password=self.password, inbox_prefix=self.inbox_prefix)


@dataclass(frozen=True, slots=True)
class RestrictiveStack:
    """What :func:`write_restrictive_stack` wrote and how to use it."""

    workdir: Path
    config_path: Path
    credentials_path: Path
    authorization: str = field(repr=False)  # holds passwords
    admin: StackUser
    apps: Mapping[str, StackUser]
    consumer_modes: Mapping[str, str]
    stream_name: str
    host: str
    port: int
    store_dir: Path

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def urls(self) -> tuple[str, ...]:
        return (self.url,)

    @property
    def pair(self) -> tuple[str, str]:
        first, second = tuple(self.apps)
        return first, second

    def peer_of(self, app: str) -> str:
        first, second = self.pair
        return second if app == first else first

    def admin_env(self) -> dict[str, str]:
        """Environment for ``python -m provisioner apply`` (admin credentials)."""
        first, second = self.pair
        env = {
            "NATS_URLS": ",".join(self.urls),
            "NATS_USER": self.admin.user,
            "NATS_PASSWORD": self.admin.password,
            "STREAM_NAME": self.stream_name,
            "APPS": f"{first},{second}",
        }
        for app, mode in self.consumer_modes.items():
            env[f"CONSUMER_MODE_{app.upper()}"] = mode
        return env

    def app_env(self, app: str) -> dict[str, str]:
        """Environment for one service: its own least-privilege user, restrictive mode."""
        user = self.apps[app]
        env = {
            "APP_NAME": app,
            "DESTINATION_APP": self.peer_of(app),
            "NATS_URLS": ",".join(self.urls),
            "NATS_URL": self.url,
            "NATS_USER": user.user,
            "NATS_PASSWORD": user.password,
            "STREAM_NAME": self.stream_name,
            "MODE": "restrictive",
            "CONSUMER_MODE": self.consumer_modes[app],
        }
        if user.inbox_prefix:
            env["NATS_INBOX_PREFIX"] = user.inbox_prefix
        return env

    def operator_env(self, app: str) -> dict[str, str]:
        """``app_env(app)`` connected as the admin: for ``bridge dlq ...`` / ``bridge
        provision ...`` of that app, which need the JetStream API."""
        env = self.app_env(app)
        env.pop("NATS_INBOX_PREFIX", None)  # the admin may use any inbox
        env.update(NATS_USER=self.admin.user, NATS_PASSWORD=self.admin.password)
        return env

    def app_config(self, app: str, **overrides: object) -> BridgeConfig:
        """The library config an app of this stack runs with."""
        values: dict[str, object] = {
            "nats_urls": self.urls,
            "stream_name": self.stream_name,
            "credentials": self.apps[app].credentials(),
        }
        values.update(overrides)
        return configure_bidirectional(
            app,
            self.peer_of(app),
            "restrictive",
            consumer_mode=self.consumer_modes[app],
            env={},
            **values,
        )

    def nats_server_command(self) -> list[str]:
        return [nats_server_binary(), "-c", str(self.config_path)]

    def provision_command(self, action: str = "apply") -> list[str]:
        return [sys.executable, "-m", "provisioner", action]


def _modes(apps: Sequence[str], consumer_modes: str | Mapping[str, str] | None) -> dict[str, str]:
    if consumer_modes is None or isinstance(consumer_modes, str):
        mode = consumer_modes or "pull"
        modes = dict.fromkeys(apps, mode)
    else:
        unknown = sorted(set(consumer_modes) - set(apps))
        if unknown:
            raise ConfigError(f"consumer_modes names unknown app(s): {', '.join(unknown)}")
        modes = {app: consumer_modes.get(app, "pull") for app in apps}
    for app, mode in modes.items():
        if mode not in ("pull", "push"):
            raise ConfigError(f"consumer mode of {app!r} must be pull or push, got {mode!r}")
    return modes


def write_restrictive_stack(
    workdir: Path,
    apps: Sequence[str] = ("system_a", "system_b"),
    consumer_modes: str | Mapping[str, str] | None = None,
    port: int = 4222,
    *,
    host: str = "127.0.0.1",
    stream_name: str = "sync-stream",
    store_dir: Path | None = None,
    admin_user: str = "admin",
    passwords: Mapping[str, str] | None = None,
) -> RestrictiveStack:
    """Write ``nats-restrictive.conf`` and ``credentials.env`` into ``workdir``.

    ``consumer_modes`` is one mode for every app or a mapping per app (default
    pull).  Passwords are random unless given in ``passwords`` (keys: app names
    and ``admin_user``).  Each app gets its own reply-inbox prefix
    (``BridgeConfig.inbox_prefix``, ``_INBOX_<app>``), granted in its permissions and
    exported by ``app_env`` as ``NATS_INBOX_PREFIX``, so no app can subscribe to
    another's replies.
    """
    if len(apps) != 2:
        raise ConfigError(f"a stack syncs exactly two apps, got {list(apps)}")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    store = Path(store_dir) if store_dir is not None else workdir / "jetstream"
    given = passwords or {}
    modes = _modes(apps, consumer_modes)
    admin = StackUser(admin_user, given.get(admin_user) or secrets.token_urlsafe(24))
    users = {
        app: StackUser(
            app,
            given.get(app) or secrets.token_urlsafe(24),
            BridgeConfig(app_name=app, destination_app=peer).inbox_prefix,
        )
        for app, peer in ((apps[0], apps[1]), (apps[1], apps[0]))
    }
    first, second = apps
    configs = [
        configure_bidirectional(
            app,
            peer,
            "restrictive",
            consumer_mode=modes[app],
            env={},
            stream_name=stream_name,
            credentials=users[app].credentials(),
        )
        for app, peer in ((first, second), (second, first))
    ]
    passwords_by_app = {app: users[app].password for app in apps}
    authorization = render_authorization(
        configs,
        admin_user=admin.user,
        admin_password=admin.password,
        app_passwords=passwords_by_app,
    )
    text = render_server_config(
        configs,
        admin_user=admin.user,
        admin_password=admin.password,
        app_passwords=passwords_by_app,
        store_dir=str(store),
        host=host,
        port=port,
    )
    config_path = workdir / CONFIG_NAME
    _write_private(config_path, text)
    credentials: dict[str, str] = {"NATS_USER": admin.user, "NATS_PASSWORD": admin.password}
    for app in apps:
        credentials[f"NATS_PASSWORD_{app.upper()}"] = users[app].password
    credentials_path = write_env_file(workdir / CREDENTIALS_NAME, credentials)
    return RestrictiveStack(
        workdir=workdir,
        config_path=config_path,
        credentials_path=credentials_path,
        authorization=authorization,
        admin=admin,
        apps=users,
        consumer_modes=modes,
        stream_name=stream_name,
        host=host,
        port=port,
        store_dir=store,
    )


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (it holds passwords)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    path.chmod(0o600)
