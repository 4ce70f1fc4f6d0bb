"""``bridge``: the operator's command line, configured by the services' environment
variables (see :mod:`bridge.env`).

    bridge status                      connection, stream, consumer lag, outbox, inbox, DLQ
    bridge outbox list|retry|purge     inspect and repair the outbox
    bridge dlq list|show|replay|purge  inspect and replay dead letters
    bridge provision plan|apply|verify this app's stream and consumer
    bridge doctor                      every permission this app needs, pass/fail
    bridge backfill                    re-emit every synced row through the outbox
    bridge reconcile [--models MODULE] one anti-entropy pass against the peer

Every command prints a table for people or, with ``--json``, one JSON document.
``--env-file PATH`` (repeatable, before the command; its values win over the
environment) reads ``NAME=value`` lines, e.g. ``.devstack/system_a.env``.  Exit codes:
0 ok, 1 a check failed or something is missing, 2 usage error, 3 NATS or the database
unreachable, or the NATS user may not use the JetStream API (``bridge.cli._admin``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any, TextIO

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from bridge._support.durations import parse_duration
from bridge.cli._admin import ADMIN_COMMANDS, DeniedFastApi, until_denied
from bridge.cli._dlq import dlq_command
from bridge.config import BridgeConfig
from bridge.env import (
    config_from_env,
    database_url_from_env,
    models_module_from_env,
    with_env_files,
)
from bridge.errors import (
    AdminCredentialsError,
    BridgeError,
    ConfigError,
    ConnectionError,
    ProvisioningError,
    ReconcileBusyError,
)
from bridge.inbox.processor import inbox_counts
from bridge.outbox import admin as outbox_admin
from bridge.outbox.capture import Outbox
from bridge.provisioning.access import check_permissions
from bridge.provisioning.specs import Provisioner, consumer_spec, stream_spec
from bridge.reconcile.backfill import (
    STATUS_ALREADY_COMPLETED,
    STATUS_COMPLETED,
    STATUS_STOPPED,
    Backfill,
    BackfillOptions,
    BackfillProgress,
)
from bridge.reconcile.reconciler import Reconciler
from bridge.reconcile.synced_models import load_synced_models
from bridge.routing.dlq import DeadLetters
from bridge.routing.letter import oldest_letter_age
from bridge.transport.connection import Connection
from bridge.transport.jsapi import JetStreamApi
from bridge.transport.publisher import Publisher

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


@dataclass
class Output:
    out: TextIO
    err: TextIO
    json_mode: bool

    def emit(self, data: Any, table: Sequence[Sequence[Any]] | None = None) -> None:
        if self.json_mode:
            self.out.write(json.dumps(data, indent=2, default=str) + "\n")
        elif table is not None:
            self.out.write(render_table(table) + "\n")
        else:
            self.out.write(f"{data}\n")

    def progress(self, done: int, total: int, label: str = "") -> None:
        if not self.json_mode:
            bar = ""
            if label:
                filled = 20 * done // total if total else 20
                bar = f"{label} [{'#' * filled}{'.' * (20 - filled)}] "
            self.err.write(f"\r{bar}{done}/{total}")
            if done == total:
                self.err.write("\n")
            self.err.flush()


def render_table(rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns; the first row is the header."""
    if not rows:
        return "(nothing)"
    text_rows = [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in text_rows) for i in range(len(text_rows[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in text_rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


class Context:
    """Lazily opened NATS connection and database engine for one command."""

    def __init__(self, config: BridgeConfig, env: Mapping[str, str]) -> None:
        self.config = config
        self.env = env
        self.engine: AsyncEngine | None = None
        self.connection: Connection | None = None

    def db(self) -> AsyncEngine:
        if self.engine is None:
            self.engine = create_async_engine(database_url_from_env(self.env), pool_size=2)
        return self.engine

    async def nats(self) -> Connection:
        if self.connection is None:
            self.connection = Connection(self.config, name=f"{self.config.app_name}-cli")
            await self.connection.start(timeout=5.0)
        return self.connection

    def permission_errors(self) -> list[str]:
        """The server's permission violations on this command's connection so far."""
        return list(self.connection.permission_errors) if self.connection is not None else []

    async def dead_letters(self) -> DeadLetters:
        conn = await self.nats()
        publisher = Publisher(conn.js, stream=self.config.stream_name)
        return DeadLetters(self.config, conn.js, publisher)

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.stop(timeout=2.0)
        if self.engine is not None:
            await self.engine.dispose()


@asynccontextmanager
async def opened(config: BridgeConfig, env: Mapping[str, str]) -> AsyncIterator[Context]:
    ctx = Context(config, env)
    try:
        yield ctx
    finally:
        await ctx.close()


# -- commands ----------------------------------------------------------------------------
async def cmd_status(ctx: Context, args: argparse.Namespace, out: Output) -> int:
    cfg = ctx.config
    report: dict[str, Any] = {"app": cfg.app_name, "stream": cfg.stream_name}
    conn = await ctx.nats()
    report["nats"] = conn.snapshot()
    api = DeniedFastApi(conn, cfg, command="status", timeout=2.0)
    try:
        info = await api.request(f"STREAM.INFO.{cfg.stream_name}", {"subjects_filter": ">"})
        state = info.get("state", {})
        report["stream_messages"] = state.get("messages")
        report["dead_letters"] = (state.get("subjects") or {}).get(cfg.subjects.dlq, 0)
        report["dead_letters_oldest_age_seconds"] = await oldest_letter_age(api.request, cfg)
        cinfo = await api.request(f"CONSUMER.INFO.{cfg.stream_name}.{cfg.subjects.durable}")
        report["consumer"] = {
            "name": cfg.subjects.durable,
            "num_pending": cinfo.get("num_pending"),
            "num_ack_pending": cinfo.get("num_ack_pending"),
            "num_redelivered": cinfo.get("num_redelivered"),
            "error": (cinfo.get("error") or {}).get("description"),
        }
    except ProvisioningError as exc:
        report["stream_error"] = str(exc)
    report["outbox"] = asdict(await outbox_admin.outbox_counts(ctx.db()))
    async with AsyncSession(ctx.db()) as session:
        report["inbox"] = asdict(await inbox_counts(session))
    consumer = report.get("consumer") or {}
    rows = [
        ["item", "value"],
        ["nats", report["nats"]["state"]],
        ["stream messages", report.get("stream_messages", "n/a")],
        ["consumer pending", consumer.get("num_pending", "n/a")],
        ["consumer ack pending", consumer.get("num_ack_pending", "n/a")],
        ["dead letters", report.get("dead_letters", "n/a")],
        ["oldest dead letter age (s)", report.get("dead_letters_oldest_age_seconds", "n/a")],
        *[[f"outbox {k}", v] for k, v in report["outbox"].items()],
        *[[f"inbox {k}", v] for k, v in report["inbox"].items()],
    ]
    out.emit(report, rows)
    return EXIT_OK


async def cmd_outbox(ctx: Context, args: argparse.Namespace, out: Output) -> int:
    engine = ctx.db()
    if args.action == "list":
        rows = await outbox_admin.list_rows(engine, status=args.status, limit=args.limit)
        table: list[list[Any]] = [
            ["id", "event_type", "resource_id", "status", "attempts", "last_error"]
        ]
        table += [
            [
                r["id"],
                r["event_type"],
                r["resource_id"],
                r["status"],
                r["attempts"],
                (r["last_error"] or "")[:60],
            ]
            for r in rows
        ]
        out.emit(rows, table)
    elif args.action == "retry":
        count = await outbox_admin.requeue(engine, args.ids or None)
        out.emit({"requeued": count}, [["requeued"], [count]])
    else:
        age = parse_duration(args.older_than, name="--older-than")
        count = await outbox_admin.purge(engine, older_than=age, status=args.status or "sent")
        out.emit({"purged": count}, [["purged"], [count]])
    return EXIT_OK


async def cmd_dlq(ctx: Context, args: argparse.Namespace, out: Output) -> int:
    """``bridge dlq ...`` (:mod:`bridge.cli._dlq`)."""
    done = await dlq_command(await ctx.dead_letters(), args.action, args.seq, args.limit, out)
    return EXIT_OK if done else EXIT_FAILED


async def cmd_provision(ctx: Context, args: argparse.Namespace, out: Output) -> int:
    conn = await ctx.nats()
    provisioner = Provisioner(JetStreamApi(conn.nc))
    stream, consumers = stream_spec(ctx.config), [consumer_spec(ctx.config)]
    if args.action == "verify":
        try:
            await provisioner.verify(stream, consumers)
        except ProvisioningError as exc:
            out.emit({"ok": False, "error": str(exc)}, [["result"], [str(exc)]])
            return EXIT_FAILED
        out.emit({"ok": True}, [["result"], ["stream and consumer match"]])
        return EXIT_OK
    plan = await (provisioner.apply if args.action == "apply" else provisioner.plan)(
        stream, consumers
    )
    changes = [{"kind": c.kind, "target": c.target, "fields": c.fields} for c in plan.changes]
    out.emit(
        {"applied": args.action == "apply", "changes": changes},
        None if out.json_mode else [["plan"], *[[line] for line in plan.describe().splitlines()]],
    )
    return EXIT_OK


async def cmd_doctor(ctx: Context, args: argparse.Namespace, out: Output) -> int:
    conn = await ctx.nats()
    checks = await check_permissions(conn.nc, ctx.config)
    rows = [["operation", "subject", "result", "detail"]]
    rows += [[c.operation, c.subject, "pass" if c.allowed else "FAIL", c.detail] for c in checks]
    out.emit([asdict(c) for c in checks], rows)
    return EXIT_OK if all(c.allowed for c in checks) else EXIT_FAILED


async def cmd_backfill(ctx: Context, args: argparse.Namespace, out: Output) -> int:
    """Backfill through the outbox (bridge.reconcile.backfill); Ctrl-C or SIGTERM stops after the
    batch in flight (exit 1; run it again to resume)."""
    try:
        models = load_synced_models(args.models or models_module_from_env(ctx.env) or "")
        options = BackfillOptions(
            run_name=args.run, batch_size=args.batch_size, rate=args.rate,
            max_pending=args.max_pending or None, restart=args.restart,
        )  # fmt: skip
    except ConfigError as exc:
        out.err.write(f"bridge backfill: {exc}\n")
        return EXIT_USAGE
    backfill = Backfill(ctx.db(), Outbox(ctx.config), models, options)

    def show(p: BackfillProgress) -> None:
        if p.waiting_for_relay is None:
            out.progress(p.done, p.total, label=p.resource_type)
        elif not out.json_mode:
            out.err.write(
                f"\r{p.resource_type}: waiting, {p.waiting_for_relay} outbox rows pending"
            )

    loop = asyncio.get_running_loop()
    stop_signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.getsignal(sig) for sig in stop_signals}
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # main thread only
        for sig in stop_signals:  # finish the batch in flight, then stop
            loop.add_signal_handler(sig, backfill.request_stop)
    try:
        report = await backfill.run(show)
    finally:
        for sig, handler in previous.items():
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)
                if handler is not None:
                    signal.signal(sig, handler)
    rows: list[list[Any]] = [
        ["resource", "table", "emitted now", "emitted in run", "rows", "finished"]
    ]
    rows += [
        [m.resource_type, m.table, m.emitted, m.rows_emitted, m.total, m.finished]
        for m in report.models
    ]
    out.emit(asdict(report), rows)
    if not out.json_mode:
        rate = report.emitted / report.elapsed_seconds if report.elapsed_seconds else 0.0
        notes = {
            STATUS_COMPLETED: "completed; the running service's relay publishes the rows",
            STATUS_ALREADY_COMPLETED: "was already completed: nothing emitted "
            "(--restart or another --run to backfill again)",
            STATUS_STOPPED: "stopped: run the same command again to resume",
        }
        out.out.write(
            f"run {report.run_name!r} {notes[report.status]} — {report.emitted} rows in "
            f"{report.elapsed_seconds:.1f}s ({rate:.0f}/s, paused {report.paused_seconds:.1f}s)\n"
        )
    return EXIT_OK if report.status != STATUS_STOPPED else EXIT_FAILED


async def cmd_reconcile(ctx: Context, args: argparse.Namespace, out: Output) -> int:
    try:
        models = load_synced_models(args.models or models_module_from_env(ctx.env))
    except ConfigError as exc:
        out.err.write(f"bridge reconcile: {exc}\n")
        return EXIT_USAGE
    conn = await ctx.nats()
    reconciler = Reconciler(ctx.config, conn.nc, ctx.db(), models, outbox=Outbox(ctx.config))
    try:
        report = await reconciler.run()
    except ReconcileBusyError as exc:
        out.emit({"ok": False, "error": str(exc)}, [["result"], [str(exc)]])
        return EXIT_FAILED
    data = report.to_dict()
    out.emit(data, [["item", "value"], *data.items()])
    return EXIT_OK


COMMANDS = {
    "status": cmd_status,
    "outbox": cmd_outbox,
    "dlq": cmd_dlq,
    "provision": cmd_provision,
    "doctor": cmd_doctor,
    "backfill": cmd_backfill,
    "reconcile": cmd_reconcile,
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
    prov = sub.add_parser("provision", help="plan / apply / verify this app's stream and consumer")
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
                work = until_denied(work, ctx.permission_errors, command=command, config=config)
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


if __name__ == "__main__":
    sys.exit(main())
