"""``bridge-provision`` (``python -m provisioner``): the admin side of restrictive mode,
for both apps of a pair at once.

Subcommands
  plan         show what ``apply`` would change (read-only)
  apply        create / update the stream and both apps' consumers
  verify       read-only check; exit 1 naming every missing or drifted item
  permissions  write the nats-server config (or only its authorization block,
               or the permission sets as JSON) for the apps' least-privilege users

Exit codes: 0 ok · 1 drift or missing (verify), provisioning refused by the
server · 2 usage or invalid settings · 3 NATS unreachable or refusing the credentials,
or the admin user may not manage JetStream.  ``--json`` and ``--log-level`` go before
or after the subcommand.

``plan``, ``apply`` and ``verify`` are those of ``bridge provision``
(:mod:`bridge.cli._topology`), over the stream and both apps' consumers; the settings
are the apps' environment read by :func:`bridge.env.config_from_env` with the flags
applied (:mod:`bridge.cli._pair`).  Tests drive it in-process:
``main_async(argv, env=..., stdout=..., stderr=...)``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TextIO

from bridge.cli._options import (
    EXIT_FAILED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    add_global_options,
    configure_command_logging,
)
from bridge.cli._pair import ProvisionerSettings, load_settings
from bridge.cli._permissions import UsageError, cmd_permissions
from bridge.cli._topology import run_topology_command
from bridge.errors import BridgeError, ConfigError, PermissionDeniedError
from bridge.errors import ConnectionError as BridgeConnectionError
from bridge.transport.connection import Connection
from bridge.transport.jsapi import JetStreamApi

PROG = "bridge-provision"


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("settings (override the environment)")
    group.add_argument("--nats-url", dest="nats_urls", help="NATS_URLS: comma-separated URLs")
    group.add_argument("--user", help="NATS_USER: admin user")
    group.add_argument(
        "--password", help="NATS_PASSWORD: admin password (prefer the env var: argv is visible)"
    )
    group.add_argument("--stream", help="STREAM_NAME (default sync-stream)")
    group.add_argument("--apps", help="APPS: the two app names, comma-separated")
    group.add_argument("--consumer-mode", choices=("pull", "push"), help="CONSUMER_MODE")
    group.add_argument(
        "--consumer-mode-for",
        action="append",
        default=[],
        metavar="APP=MODE",
        help="CONSUMER_MODE_<APP> (repeatable)",
    )
    group.add_argument("--max-deliver", type=int, help="MAX_DELIVER")
    group.add_argument("--ack-wait", help="ACK_WAIT, e.g. 30s")
    group.add_argument("--backoff", help="BACKOFF, e.g. '1s,5s,15s,30s,60s'")
    group.add_argument(
        "--dlq-retention",
        choices=("never", "stream"),
        help="DLQ_RETENTION: never (dead letters kept until handled) or stream (max_age)",
    )
    group.add_argument(
        "--request-timeout",
        type=float,
        default=5.0,
        help="seconds to wait for each JetStream API answer (default 5)",
    )
    group.add_argument(
        "--connect-timeout", type=float, default=5.0, help="seconds to reach NATS (default 5)"
    )
    add_global_options(common, subcommand=True, env_file=False)

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Plan, apply and verify the JetStream stream and consumers of a synced "
        "pair with admin credentials, and generate the apps' least-privilege NATS users.",
        epilog="exit codes: 0 ok, 1 drift/missing, 2 usage, 3 NATS unreachable or admin denied",
    )
    add_global_options(parser, subcommand=False, env_file=False)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("plan", parents=[common], help="show what apply would change")
    sub.add_parser("apply", parents=[common], help="create or update stream and consumers")
    sub.add_parser("verify", parents=[common], help="check only; exit 1 on drift or missing")
    perms = sub.add_parser(
        "permissions", parents=[common], help="write the nats-server config for the app users"
    )
    perms.add_argument("-o", "--output", default="-", help="file to write (default stdout)")
    perms.add_argument(
        "--format",
        choices=("conf", "authorization", "json"),
        default="conf",
        help="full server config, only the authorization block, or the permission sets",
    )
    perms.add_argument("--admin-user", help="admin user (default NATS_USER or 'admin')")
    perms.add_argument(
        "--app-password",
        action="append",
        default=[],
        metavar="APP=PASSWORD",
        help="app password (default env NATS_PASSWORD_<APP>)",
    )
    perms.add_argument(
        "--generate-passwords",
        action="store_true",
        help="generate missing passwords; requires --credentials-out",
    )
    perms.add_argument("--credentials-out", help="env file (mode 0600) for generated passwords")
    perms.add_argument("--store-dir", help="include a jetstream block with this store dir")
    perms.add_argument("--host", help="listen host line in the config")
    perms.add_argument("--port", type=int, help="listen port line in the config")
    perms.add_argument(
        "--private-inboxes",
        action="store_true",
        help="kept for compatibility: each app is always granted only its own _INBOX_<app>.>",
    )
    perms.add_argument(
        "--advisories",
        action="store_true",
        help="also grant the max-deliveries advisory and direct get (off: operators handle it)",
    )
    return parser


def settings_from_args(args: argparse.Namespace, env: Mapping[str, str]) -> ProvisionerSettings:
    return load_settings(
        env,
        nats_urls=args.nats_urls,
        user=args.user,
        password=args.password,
        stream=args.stream,
        apps=args.apps,
        consumer_mode=args.consumer_mode,
        consumer_mode_for=args.consumer_mode_for,
        max_deliver=args.max_deliver,
        ack_wait=args.ack_wait,
        backoff=args.backoff,
        dlq_retention=args.dlq_retention,
    )


async def run_against_nats(
    command: str,
    settings: ProvisionerSettings,
    out: TextIO,
    *,
    as_json: bool,
    connect_timeout: float,
    request_timeout: float = 5.0,
) -> int:
    """Connect with the admin credentials, run one command, disconnect."""
    connection = Connection(settings.admin_config(), name=PROG)
    await connection.start(timeout=connect_timeout)
    try:
        api = JetStreamApi(connection.nc, timeout=request_timeout)
        stream, consumers = settings.desired()
        return await run_topology_command(command, api, stream, consumers, out, as_json=as_json)
    finally:
        await connection.stop(timeout=2)


# -- entry point ----------------------------------------------------------------------------
async def main_async(
    argv: Sequence[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run one command; return the exit code (argparse errors raise SystemExit(2))."""
    environ = os.environ if env is None else env
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    args = build_parser().parse_args(argv)
    configure_command_logging(args)
    try:
        settings = settings_from_args(args, environ)
    except ConfigError as exc:
        err.write(f"{PROG}: error: {exc}\n")
        return EXIT_USAGE
    try:
        if args.command == "permissions":
            return cmd_permissions(args, settings, environ, out)
        return await run_against_nats(
            args.command,
            settings,
            out,
            as_json=args.json,
            connect_timeout=args.connect_timeout,
            request_timeout=args.request_timeout,
        )
    except (ConfigError, UsageError) as exc:
        err.write(f"{PROG}: error: {exc}\n")
        return EXIT_USAGE
    except BridgeConnectionError as exc:
        err.write(f"{PROG}: {exc}\n")  # names the (redacted) URLs already
        return EXIT_UNREACHABLE
    except PermissionDeniedError as exc:
        err.write(f"{PROG}: the admin user may not manage JetStream: {exc}\n")
        return EXIT_UNREACHABLE
    except BridgeError as exc:
        err.write(f"{PROG}: {exc}\n")
        return EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (``bridge-provision``): library log records from
    ``--log-level`` (default warning), one line each on stderr."""
    return asyncio.run(main_async(argv))
