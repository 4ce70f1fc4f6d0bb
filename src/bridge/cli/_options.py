"""Options every command of both command lines takes before or after the subcommand
(``bridge status --json`` and ``bridge --json status`` alike), and the exit codes.

argparse gives a subparser's values precedence over the main parser's, so the copy on
each subcommand defaults to *absent* (``SUPPRESS``) and only a given option reaches the
namespace; ``--env-file`` given in both places is kept in order (:func:`env_files`).
"""

from __future__ import annotations

import argparse

from bridge.observability.logs import ensure_logging

#: Exit codes of both command lines (docs/OPERATIONS.md, "Exit codes").
EXIT_OK = 0
#: The command ran and found something wrong or missing, or could not finish.
EXIT_FAILED = 1
#: Usage or configuration: arguments, environment, models the command cannot use.
EXIT_USAGE = 2
#: NATS or the database cannot be reached or refuses the connection, or the NATS user
#: lacks the JetStream API permission the command needs.
EXIT_UNREACHABLE = 3
#: ``bridge schema diff``: NEW is not compatible with OLD (distinct from a failure).
EXIT_INCOMPATIBLE = 4

LOG_LEVELS = ("debug", "info", "warning", "error")


def add_global_options(
    parser: argparse.ArgumentParser, *, subcommand: bool, env_file: bool = True
) -> None:
    """``--json``, ``--log-level`` (and ``--env-file``) on the main parser
    (``subcommand=False``, with defaults) or on a subcommand's (absent unless given)."""
    absent = argparse.SUPPRESS
    parser.add_argument("--json", action="store_true", default=absent if subcommand else False,
                        help="machine-readable output (one JSON document)")  # fmt: skip
    parser.add_argument("--log-level", choices=LOG_LEVELS,
                        default=absent if subcommand else "warning",
                        help="library log records shown on stderr (default warning)")  # fmt: skip
    if env_file:
        parser.add_argument(
            "--env-file", action="append", metavar="PATH",
            dest="env_file_after" if subcommand else "env_file",
            default=absent if subcommand else [],
            help="NAME=value lines (e.g. .devstack/system_a.env) that win over the "
            "environment; repeatable, a later file wins",
        )  # fmt: skip


def env_files(args: argparse.Namespace) -> list[str]:
    """The ``--env-file`` paths in the order given (before, then after the subcommand)."""
    return [*getattr(args, "env_file", []), *getattr(args, "env_file_after", [])]


def configure_command_logging(args: argparse.Namespace) -> None:
    """One line per record on stderr at ``--log-level``, unless the process configured
    logging itself (:func:`bridge.observability.logs.ensure_logging`)."""
    ensure_logging(level=getattr(args, "log_level", "warning").upper())
