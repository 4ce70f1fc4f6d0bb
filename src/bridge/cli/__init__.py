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
    bridge schema diff OLD NEW         is a new event catalog compatible? (bridge.cli._schema)

Every command prints a table for people or, with ``--json``, one JSON document.
``--env-file PATH`` (repeatable; its values win over the environment) reads
``NAME=value`` lines, e.g. ``.devstack/system_a.env``.  ``--json``, ``--env-file`` and
``--log-level`` go before or after the command (:mod:`bridge.cli._options`).  Library
log records (a retried connection, ...) are one line each on stderr, from WARNING.

Exit codes (docs/OPERATIONS.md, "Exit codes"): 0 ok; 1 the command found something
wrong or missing (a failed check, a dead letter not replayed, a stopped backfill, the
bridge's tables missing) or could not finish; 2 usage or configuration (arguments,
environment, models the command cannot use); 3 NATS or the database cannot be reached
or refuses the connection, or the NATS user may not use the JetStream API the command
needs (``bridge.cli._admin``); 4 ``bridge schema diff`` found an incompatible change.
Errors are one line on stderr saying what to do (:mod:`bridge.cli._failures`).
``bridge schema`` reads files only: no environment, NATS or database.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TextIO

from sqlalchemy.exc import SQLAlchemyError

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
from bridge.cli._context import Output, opened
from bridge.cli._failures import database_failure
from bridge.cli._options import (
    EXIT_FAILED,
    EXIT_INCOMPATIBLE,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    add_global_options,
    configure_command_logging,
    env_files,
)
from bridge.cli._schema import add_schema_parser, cmd_schema
from bridge.env import config_from_env, with_env_files
from bridge.errors import AdminCredentialsError, BridgeError, ConfigError, ConnectionError

__all__ = [
    "EXIT_FAILED",
    "EXIT_INCOMPATIBLE",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "main",
    "main_async",
]

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
    add_global_options(parser, subcommand=False)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help_)
        add_global_options(cmd, subcommand=True)
        return cmd

    command("status", "connection, stream, consumer, outbox, inbox, DLQ")
    outbox = command("outbox", "inspect and repair the outbox")
    outbox.add_argument("action", choices=["list", "retry", "purge"])
    outbox.add_argument("--status", choices=["pending", "sent", "failed"])
    outbox.add_argument("--limit", type=int, default=50)
    outbox.add_argument("--older-than", default="168h", help="age, e.g. 24h (purge)")
    outbox.add_argument("ids", nargs="*", type=int, help="row ids (retry)")
    dlq = command("dlq", "inspect, replay and purge dead letters")
    dlq.add_argument("action", choices=["list", "show", "replay", "purge"])
    dlq.add_argument("seq", nargs="*", type=int, help="DLQ stream sequence(s)")
    dlq.add_argument("--limit", type=int, help="list: at most N (100); replay: at most N (all)")
    prov = command(
        "provision",
        "plan / apply / verify this app's stream and consumer (the pair: bridge-provision)",
    )
    prov.add_argument("action", choices=["plan", "apply", "verify"])
    command("doctor", "check every permission this app needs")
    bf = command("backfill", "re-emit every synced row through the outbox")
    bf.add_argument("--models", help="module declaring the synced models (default $BRIDGE_MODELS)")
    bf.add_argument("--batch-size", type=int, default=500, help="rows per transaction")
    bf.add_argument("--rate", type=float, help="rows per second (default: unlimited)")
    bf.add_argument("--max-pending", type=int, default=10_000, help="pause above this (0: never)")
    bf.add_argument("--run", default="default", help="run name: re-running it resumes")
    bf.add_argument("--restart", action="store_true", help="start the run from the first row")
    rec = command("reconcile", "compare with the peer and re-emit differing rows")
    rec.add_argument("--models", help="module declaring the synced models (env BRIDGE_MODELS)")
    add_console_parser(sub)
    schema = add_schema_parser(sub)
    add_global_options(schema, subcommand=True, env_file=False)
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
    configure_command_logging(args)
    output = Output(out, err, args.json)
    if args.command == "schema":  # files only: no environment, NATS or database
        return cmd_schema(args, output)
    environ: Mapping[str, str] = os.environ if env is None else env
    try:
        environ = with_env_files(environ, env_files(args))
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
    except (AdminCredentialsError, ConnectionError) as exc:  # they name the cause
        err.write(f"bridge: {exc}\n")
        return EXIT_UNREACHABLE
    except ConfigError as exc:
        err.write(f"bridge {command}: configuration error: {exc}\n")
        return EXIT_USAGE
    except (SQLAlchemyError, OSError) as exc:
        code, message = database_failure(exc, environ.get("DATABASE_URL"))
        err.write(f"bridge {command}: {message}\n")
        return code
    except BridgeError as exc:
        err.write(f"bridge: {exc}\n")
        return EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point."""
    return asyncio.run(main_async(argv))
