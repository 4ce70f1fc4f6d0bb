"""The ``bridge`` commands: status, outbox, dlq, provision, doctor, backfill, reconcile.

Each is ``async def cmd_<name>(ctx, args, out) -> exit code`` (:mod:`bridge.cli`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from dataclasses import asdict
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from bridge._support.durations import parse_duration
from bridge.cli._admin import DeniedFastApi
from bridge.cli._context import Context, Output
from bridge.cli._dlq import dlq_command
from bridge.cli._options import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from bridge.cli._topology import run_topology_command
from bridge.env import (
    models_module_from_env,
)
from bridge.errors import (
    ConfigError,
    ProvisioningError,
    ReconcileBusyError,
)
from bridge.inbox.processor import inbox_counts
from bridge.outbox import admin as outbox_admin
from bridge.outbox.capture import Outbox
from bridge.provisioning.access import check_permissions
from bridge.provisioning.specs import consumer_spec, stream_spec
from bridge.reconcile._digest import LocalSide
from bridge.reconcile.backfill import (
    STATUS_ALREADY_COMPLETED,
    STATUS_COMPLETED,
    STATUS_STOPPED,
    Backfill,
    BackfillOptions,
    BackfillProgress,
)
from bridge.reconcile.reconciler import Reconciler
from bridge.reconcile.synced_models import load_synced_models, reconciled_models
from bridge.routing.letter import oldest_letter_age
from bridge.transport.jsapi import JetStreamApi


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
    """This app's stream and consumer (:mod:`bridge.cli._topology`; the pair's:
    ``bridge-provision``)."""
    conn = await ctx.nats()
    stream, consumers = stream_spec(ctx.config), [consumer_spec(ctx.config)]
    return await run_topology_command(
        args.action, JetStreamApi(conn.nc), stream, consumers, out.out, as_json=out.json_mode
    )


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
    # The models are checked before anything connects: a model that cannot be
    # reconciled is a configuration error (exit 2), whatever NATS' state.
    module = args.models or models_module_from_env(ctx.env)
    try:
        models = reconciled_models(load_synced_models(module))
        if not models:
            raise ConfigError(
                f"no model of {module!r} opts in to reconciliation "
                "(set __bridge_reconcile__ = True on the models to compare)"
            )
    except ConfigError as exc:
        out.err.write(f"bridge reconcile: configuration error: {exc}\n")
        return EXIT_USAGE
    conn = await ctx.nats()
    reconciler = Reconciler(
        LocalSide(ctx.config, conn.nc, ctx.db(), models, outbox=Outbox(ctx.config))
    )
    try:
        report = await reconciler.run()
    except ReconcileBusyError as exc:
        out.emit({"ok": False, "error": str(exc)}, [["result"], [str(exc)]])
        return EXIT_FAILED
    data = report.to_dict()
    out.emit(data, [["item", "value"], *data.items()])
    return EXIT_OK
