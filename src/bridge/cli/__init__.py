"""``bridge``: the operator's command line, configured by the services' environment
variables (see :mod:`bridge.env`).

    bridge status                      connection, stream, consumer lag, outbox, inbox, DLQ
    bridge outbox list|retry|purge     inspect and repair the outbox
    bridge dlq list|show|replay|purge  inspect and replay dead letters
    bridge provision plan|apply|verify this app's stream and consumer
    bridge doctor                      every permission this app needs, pass/fail
    bridge backfill                    re-emit every synced row through the outbox
    bridge reconcile [--models MODULE] one anti-entropy pass against the peer
    bridge console [--host --port]     the operator console, a web page (bridge.cli._console)

Every command prints a table for people or, with ``--json``, one JSON document.
``--env-file PATH`` (repeatable, before the command; its values win over the
environment) reads ``NAME=value`` lines, e.g. ``.devstack/system_a.env``.  Exit codes:
0 ok, 1 a check failed or something is missing, 2 usage error, 3 NATS or the database
unreachable, or the NATS user may not use the JetStream API (``bridge.cli._admin``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TextIO

from bridge.cli._admin import ADMIN_COMMANDS, until_denied
from bridge.cli._commands import (
    cmd_backfill,
    cmd_dlq,
    cmd_doctor,
    cmd_outbox,
    cmd_provision,
    cmd_reconcile,
    cmd_status,
)
from bridge.cli._console import add_console_parser, cmd_console
from bridge.cli._context import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    Output,
    opened,
)
from bridge.env import config_from_env, with_env_files
from bridge.errors import AdminCredentialsError, BridgeError, ConfigError, ConnectionError

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_UNREACHABLE", "EXIT_USAGE", "main", "main_async"]

COMMANDS = {
    "status": cmd_status,
    "outbox": cmd_outbox,
    "dlq": cmd_dlq,
    "provision": cmd_provision,
    "doctor": cmd_doctor,
    "backfill": cmd_backfill,
    "reconcile": cmd_reconcile,
    "console": cmd_console,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bridge", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--env-file", action="append", default=[], metavar="PATH",
                        help="NAME=value lines (e.g. .devstack/system_a.env) that win over the "
                        "environment; repeatable, a later file wins")  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="connection, stream, consumer, outbox, inbox, DLQ")
    outbox = sub.add_parser("outbox", help="inspect and repair the outbox")
    outbox.add_argument("action", choices=["list", "retry", "purge"])
    outbox.add_argument("--status", choices=["pending", "sent", "failed"])
    outbox.add_argument("--limit", type=int, default=50)
    outbox.add_argument("--older-than", default="168h", help="age, e.g. 24h (purge)")
    outbox.add_argument("ids", nargs="*", type=int, help="row ids (retry)")
    dlq = sub.add_parser("dlq", help="inspect, replay and purge dead letters")
    dlq.add_argument("action", choices=["list", "show", "replay", "purge"])
    dlq.add_argument("seq", nargs="*", type=int, help="DLQ stream sequence(s)")
    dlq.add_argument("--limit", type=int, help="list: at most N (100); replay: at most N (all)")
    prov = sub.add_parser(
        "provision",
        help="plan / apply / verify this app's stream and consumer (the pair: bridge-provision)",
    )
    prov.add_argument("action", choices=["plan", "apply", "verify"])
    sub.add_parser("doctor", help="check every permission this app needs")
    bf = sub.add_parser("backfill", help="re-emit every synced row through the outbox")
    bf.add_argument("--models", help="module declaring the synced models (default $BRIDGE_MODELS)")
    bf.add_argument("--batch-size", type=int, default=500, help="rows per transaction")
    bf.add_argument("--rate", type=float, help="rows per second (default: unlimited)")
    bf.add_argument("--max-pending", type=int, default=10_000, help="pause above this (0: never)")
    bf.add_argument("--run", default="default", help="run name: re-running it resumes")
    bf.add_argument("--restart", action="store_true", help="start the run from the first row")
    bf.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    rec = sub.add_parser("reconcile", help="compare with the peer and re-emit differing rows")
    rec.add_argument("--models", help="module declaring the synced models (env BRIDGE_MODELS)")
    add_console_parser(sub)
    return parser


async def main_async(
    argv: Sequence[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_OK
    if args.command == "dlq" and args.action == "show" and len(args.seq) != 1:
        err.write("bridge dlq show: give exactly one sequence\n")
        return EXIT_USAGE
    output = Output(out, err, args.json)
    environ: Mapping[str, str] = os.environ if env is None else env
    try:
        environ = with_env_files(environ, args.env_file)
        config = config_from_env(environ)
    except ConfigError as exc:
        err.write(f"bridge: configuration error: {exc}\n")
        return EXIT_USAGE
    command = " ".join([args.command, *([args.action] if "action" in args else [])])
    try:
        async with opened(config, environ) as ctx:
            work = COMMANDS[args.command](ctx, args, output)
            if args.command in ADMIN_COMMANDS:
                work = until_denied(work, ctx.denied_api_subject, command=command, config=config)
            return await work
    except AdminCredentialsError as exc:
        err.write(f"bridge: {exc}\n")
        return EXIT_UNREACHABLE
    except ConnectionError as exc:
        err.write(f"bridge: {exc}\n")
        return EXIT_UNREACHABLE
    except (OSError, ConfigError) as exc:
        err.write(f"bridge: {exc}\n")
        return EXIT_UNREACHABLE
    except BridgeError as exc:
        err.write(f"bridge: {exc}\n")
        return EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point."""
    return asyncio.run(main_async(argv))
