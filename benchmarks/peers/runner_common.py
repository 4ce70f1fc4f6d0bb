"""The part of a peer runner that does not depend on the peer (stdlib + nats-py only).

A runner is a script executed with the peers' own virtualenv's python:
``python run_<peer>.py SPEC.json RESULT.json``.  The spec (written by
:mod:`benchmarks.peers.__main__`) names the servers, the stream and subject, the
peer's settings, the mode and the events ``[[event_id, body], ...]``:

- ``drain``: the peer inserts every event as a pending outbox row through its own
  API (not timed), then its relay starts; the result's ``elapsed`` runs from the
  relay's start until the stream holds all of them (stream info polled every 5 ms);
- ``steady``: the relay runs while ``producers`` coroutines commit one event per
  transaction through the peer's API at ``rate`` events/s in total; ``committed``
  (event id -> ``time.monotonic()`` after commit) and ``arrived`` (event id -> when a
  core NATS subscriber on the subject received it, i.e. when the server stored it)
  are returned for the harness to compute p50/p99.

Nothing here is imported by the bridge or the project's tests: it runs in another
virtualenv, against the peer's code.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats

Spec = dict[str, Any]
Event = tuple[str, dict[str, Any]]
MSG_ID_HEADER = "Nats-Msg-Id"


def load(argv: list[str]) -> tuple[Spec, Path]:
    if len(argv) != 3:
        raise SystemExit(f"usage: {argv[0]} SPEC.json RESULT.json")
    return json.loads(Path(argv[1]).read_text()), Path(argv[2])


async def wait_stored(spec: Spec, n: int, started: float) -> float:
    """Seconds from ``started`` until the stream holds ``n`` messages (or the deadline)."""
    nc = await nats.connect(spec["nats_url"])
    try:
        js = nc.jetstream()
        while time.monotonic() - started < spec["deadline"]:
            info = await js.stream_info(spec["stream"])
            if info.state.messages >= n:
                break
            await asyncio.sleep(0.005)
        return time.monotonic() - started
    finally:
        await nc.close()


async def steady(
    spec: Spec, commit: Callable[[str, dict[str, Any]], Awaitable[None]]
) -> dict[str, dict[str, float]]:
    """Commit the spec's events at its rate through ``commit``; time their arrival."""
    events: list[Event] = [(e[0], e[1]) for e in spec["events"]]
    committed: dict[str, float] = {}
    arrived: dict[str, float] = {}
    everything = asyncio.Event()
    nc = await nats.connect(spec["nats_url"])

    async def received(msg: Any) -> None:
        arrived[(msg.headers or {}).get(MSG_ID_HEADER, "")] = time.monotonic()
        if len(arrived) >= len(events):
            everything.set()

    sub = await nc.subscribe(spec["subject"], cb=received)
    interval = 1.0 / spec["rate"]
    producers = spec["producers"]
    started = time.monotonic()

    async def producer(offset: int) -> None:
        for k in range(offset, len(events), producers):
            delay = started + k * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            event_id, body = events[k]
            await commit(event_id, body)
            committed[event_id] = time.monotonic()

    try:
        await asyncio.gather(*(producer(p) for p in range(producers)))
        rate = len(committed) / (time.monotonic() - started)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(everything.wait(), spec["settle"])
    finally:
        await sub.unsubscribe()
        await nc.close()
    return {"committed": committed, "arrived": arrived, "rate": {"achieved": rate}}


def write(result_path: Path, result: dict[str, Any]) -> None:
    result_path.write_text(json.dumps(result))


def main(run: Callable[[Spec], Awaitable[dict[str, Any]]]) -> None:
    spec, result_path = load(sys.argv)
    gc.freeze()  # as the harness does for jetstream-bridge (docs/BENCHMARKS.md)
    write(result_path, asyncio.run(run(spec)))
