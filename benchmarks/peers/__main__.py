"""``python -m benchmarks.peers --python .bench-peers/venv/bin/python`` (``make bench-peers``).

Starts a nats-server and PostgreSQL like ``make bench``, runs
:func:`benchmarks.peers.harness.run`, prints ``bench peers_<library>_<setting>_<figure>
<value> <unit>`` lines and writes the ``## Peers`` section of docs/BENCHMARKS.md
(the rest of the file is ``make bench``'s and stays as it is).  ``BENCH_PEERS_EVENTS``
changes the drain size (default 10 000), ``BENCH_RUNS`` the rounds (default 3).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

from benchmarks.peers import harness
from benchmarks.peers.harness import Figures
from benchmarks.report import PEERS_HEADING, format_line, replace_section
from benchmarks.stats import Line
from benchmarks.workload import runs
from bridge.testing import NatsServer, PostgresServer

DEFAULT_PYTHON = ".bench-peers/venv/bin/python"
VERSIONS = ("nats-outbox", "faststream-outbox", "faststream", "nats-py")


def lines(figures: list[Figures]) -> list[Line]:
    out: list[Line] = []
    for entry in figures:
        key = f"peers_{entry.contender.key}"
        base, drained, ratio = harness.ratio(entry)
        out += [
            (f"{key}_drain_events_per_s", round(drained, 1), "events/s"),
            (f"{key}_vs_publish_async_ratio", round(ratio, 3), "ratio"),
            (f"{key}_raw_publish_async_events_per_s", round(base, 1), "events/s"),
            (f"{key}_steady_p50_ms", round(entry.p50_ms or math.nan, 2), "ms"),
            (f"{key}_steady_p99_ms", round(entry.p99_ms or math.nan, 2), "ms"),
            (f"{key}_lost", float(entry.lost), f"of {entry.checked}"),
            (f"{key}_duplicated", float(entry.duplicated), "events"),
        ]
    return out


def versions(python: str) -> str:
    """The pinned peers' versions as installed in their venv (``pip freeze``)."""
    proc = subprocess.run(
        [python, "-m", "pip", "freeze"], capture_output=True, text=True, check=False
    )
    found = {}
    for row in proc.stdout.splitlines():
        name, _, version = row.partition("==")
        if name.lower().replace("_", "-") in VERSIONS:
            found[name.lower().replace("_", "-")] = version
    return ", ".join(f"{name} {found.get(name, '?')}" for name in VERSIONS)


def section(figures: list[Figures], installed: str, *, pending: bool = False) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = []
    for entry in figures:
        c = entry.contender
        if pending:
            cells = ["pending"] * 6
        else:
            _base, drained, ratio = harness.ratio(entry)
            cells = [
                f"{drained:.0f}",
                f"{ratio:.3f}",
                "" if entry.p50_ms is None else f"{entry.p50_ms:.1f}",
                "" if entry.p99_ms is None else f"{entry.p99_ms:.1f}",
                str(entry.lost),
                str(entry.duplicated),
            ]
        rows.append(f"| {c.library} | {c.setting}: {c.described} | {' | '.join(cells)} |")
    status = (
        "**Figures pending a quiet run**: the table below is the structure; regenerate it\n"
        "with `make bench-peers` on a quiet machine."
        if pending
        else f"Latest run: {now} on {platform.machine()} with {os.cpu_count()} cores,\n"
        f"{runs()} rounds."
    )
    return f"""{PEERS_HEADING}

{status} Versions: {installed}; written by `make bench-peers`
(`python -m benchmarks.peers`, `benchmarks/peers/`), which installs the peers into their
own virtualenv (`.bench-peers/venv`, pinned in `benchmarks/peers/requirements.txt`).

Same workload for everyone: {harness.N} events of the ~300 B payload in the bridge's
envelope (the peers publish the same envelope as their payload, with `Nats-Msg-Id` =
event id), the same nats-server and PostgreSQL, a fresh stream (the bridge's stream
spec: file storage, 120 s duplicate window) and database per run. Every process (the
harness, where jetstream-bridge and the raw baseline run, and each peer's runner)
freezes its start-up objects first (`gc.freeze()`, as the services' worker does).

- **drain**: {harness.N} outbox rows inserted through the library's own API before its
  relay starts; events/s from the relay's start until all are on the stream; median of
  the rounds.
- **vs raw**: drain / nats-py `publish_async` of the same messages (`Nats-Msg-Id`,
  every PubAck checked) measured in the same round, median of the rounds.
- **steady p50/p99**: {harness.RATE:.0f} events/s for {harness.SECONDS:.0f} s, one event
  per transaction committed through the library's API by {harness.PRODUCERS} producers;
  from commit to the moment a core NATS subscriber on the subject receives the
  message (the server routes it when it stores it).
- **lost** / **duplicated**: over all runs of the contender, events committed but not on
  the stream when the run ended (a drain gives up after {harness.DEADLINE:.0f} s, a
  steady run {harness.SETTLE:.0f} s after its last commit) / event ids stored more than
  once (read back by `Nats-Msg-Id`). Asserted 0 for jetstream-bridge; reported for the
  peers.
- **default** is the library's defaults; **best** the settings its source suggests for
  throughput (read from the released wheels): nats-outbox publishes one row at a time
  per relay (`js.publish` awaited), so only batch size and poll interval matter;
  faststream-outbox publishes one row per worker at a time, so `max_workers` sets how
  many PubAcks are in flight. faststream's per-message logging is off in both
  (`logger=None`), as no other contender logs per message.

| library | settings | drain events/s | vs raw | steady p50 ms | steady p99 ms | lost | duplicated |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}
"""


async def _run(python: str, rounds: int) -> list[Figures]:
    nats_server = NatsServer().start()
    postgres = PostgresServer()
    created: list[str] = []

    async def fresh() -> str:
        url = await postgres.create_database()
        created.append(url)
        return url

    try:
        return await harness.run(python, nats_server.url, fresh, rounds)
    finally:
        for url in created:
            await postgres.drop_database(url)
        nats_server.cleanup()
        postgres.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers")
    parser.add_argument("--python", default=DEFAULT_PYTHON, help="the peers' venv python")
    parser.add_argument("--report", default="docs/BENCHMARKS.md")
    parser.add_argument("--no-report", action="store_true")
    parser.add_argument(
        "--structure-only",
        action="store_true",
        help="write the section with empty figures marked pending, run nothing",
    )
    args = parser.parse_args(argv)
    if not Path(args.python).exists():
        parser.error(f"{args.python} not found: run `make bench-peers` (it creates the venv)")
    # Absolute (the runners start in a work directory of their own), not resolved: the
    # venv's python is a symlink, and resolving it would leave the venv.
    python = os.path.abspath(args.python)
    harness.N = int(os.environ.get("BENCH_PEERS_EVENTS", str(harness.N)))
    report = Path(args.report)
    if args.structure_only:
        empty = [Figures(c) for c in harness.CONTENDERS]
        text = section(empty, versions(python), pending=True)
    else:
        gc.freeze()  # start-up objects out of the cyclic collector's sight, as the runners do
        figures = asyncio.run(_run(python, runs()))
        for line in lines(figures):
            print(format_line(line), flush=True)
        text = section(figures, versions(python))
    if not args.no_report:
        old = report.read_text() if report.exists() else ""
        report.write_text(replace_section(old, peers=text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
