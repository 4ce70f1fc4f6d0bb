"""``bridge-provision permissions``: the nats-server config (or only its
authorization block, or the permission sets as JSON) for the apps' least-privilege
users.  Passwords come from ``NATS_PASSWORD`` (admin) and ``NATS_PASSWORD_<APP>``,
``--app-password APP=...``, or are generated (``--generate-passwords
--credentials-out FILE``).  Files written here are mode 0600: they hold passwords.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO

from bridge.cli._pair import ProvisionerSettings
from bridge.provisioning.permissions import (
    app_permissions,
    render_authorization,
    render_server_config,
)

EXIT_OK = 0


class UsageError(Exception):
    """Bad combination of flags (exit 2)."""


def _pairs(items: Sequence[str], what: str) -> dict[str, str]:
    result = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise UsageError(f"{what} expects KEY=VALUE, got {item.split('=')[0]!r}=...")
        result[key] = value
    return result


def cmd_permissions(
    args: argparse.Namespace, settings: ProvisionerSettings, env: Mapping[str, str], out: TextIO
) -> int:
    # Each app's reply inbox is its own (``_INBOX_<app>``, BridgeConfig.inbox_prefix) —
    # the prefix the app's connection uses unless NATS_INBOX_PREFIX says otherwise.
    configs = settings.app_configs()
    fmt = "json" if args.json else args.format
    if fmt == "json":
        sets = [app_permissions(c, advisories=args.advisories) for c in configs]
        text = json.dumps(
            {
                "users": [
                    {"user": p.app, "consumer_mode": p.consumer_mode, **p.to_dict()} for p in sets
                ],
                "admin": "unrestricted",
            },
            indent=2,
        )
        return _write(args.output, text + "\n", out)
    admin_user = args.admin_user or env.get("NATS_USER") or "admin"
    admin_password = args.password or env.get("NATS_PASSWORD")
    given = _pairs(args.app_password, "--app-password")
    passwords = {
        c.app_name: given.get(c.app_name) or env.get(f"NATS_PASSWORD_{c.app_name.upper()}") or ""
        for c in configs
    }
    missing = [name for name, pw in passwords.items() if not pw]
    if not admin_password:
        missing.insert(0, admin_user)
    generated: dict[str, str] = {}
    if missing:
        if not args.generate_passwords:
            raise UsageError(
                f"no password for {', '.join(missing)}: set NATS_PASSWORD / NATS_PASSWORD_<APP>, "
                "pass --app-password APP=..., or --generate-passwords --credentials-out FILE"
            )
        if not args.credentials_out:
            raise UsageError("--generate-passwords needs --credentials-out FILE")
        for name in missing:
            generated[name] = secrets.token_urlsafe(24)
        admin_password = admin_password or generated.get(admin_user)
        passwords.update({k: v for k, v in generated.items() if k in passwords})
    assert admin_password is not None
    if fmt == "authorization":
        text = render_authorization(
            configs,
            admin_user=admin_user,
            admin_password=admin_password,
            app_passwords=passwords,
            advisories=args.advisories,
        )
    else:
        text = render_server_config(
            configs,
            admin_user=admin_user,
            admin_password=admin_password,
            app_passwords=passwords,
            store_dir=args.store_dir,
            host=args.host,
            port=args.port,
            advisories=args.advisories,
        )
    if generated:
        lines = [f"NATS_PASSWORD_{name.upper()}={pw}" for name, pw in generated.items()]
        _write_private(Path(args.credentials_out), "\n".join(lines) + "\n")
    return _write(args.output, text, out)


def _write(target: str, text: str, out: TextIO) -> int:
    if target == "-":
        out.write(text)
    else:
        _write_private(Path(target), text)  # holds passwords
    return EXIT_OK


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
