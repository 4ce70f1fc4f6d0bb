"""Scenario: one side's clock 10 minutes ahead, both sides writing the same records.

Both services run in this process; A's clock is injected 10 minutes ahead
(``BridgeConfig.clock``, which A's API also uses for its versions: one clock per
process, as libfaketime would give a process).  The load is *shared*: every worker
writes any record on either side, so the same records are written on both sides
concurrently (:mod:`fault_load`), and each update records the version its side had
applied just before it.  Mid-load the scenario also publishes crafted events on A's
subject: a live record's payload with ``updated_at`` 9999-12-31T23:59:59.999999Z, an
``occurred_at`` that far ahead, and an ``origin`` that is no known system.

1. ``clock_skew_10m_accepted`` — ``max_clock_skew`` 15 min on both sides: the skew is
   accepted.  A's versions are 10 minutes ahead, so they win against B's concurrent
   writes (last-writer-wins by timestamp: the limit the README states); but a write on B
   acknowledged after B applied one of A's versions gets a version just after it and
   never loses to it.  The checker applies that rule (:mod:`fault_lww`) and asserts
   convergence, 0 lost, 0 applied twice, and exactly the crafted dead letters
   (``future_version`` x2, ``unknown_origin``), never applied.
2. ``clock_skew_10m_over_bound`` — the default 5 min bound: every event of A's is a
   version from the future for B, dead-lettered ``future_version`` (B diverges meanwhile;
   A still applies B's events, which are in its past).  The relay stamps ``occurred_at``
   with the real clock, so here B's sync handlers' bound on the payload's ``updated_at``
   refuses them (libfaketime on a process would skew ``occurred_at`` too, and the inbox's
   envelope check would refuse them first, with the same reason).  After the load the clocks are
   fixed and time catches up with A's versions — simulated by moving B's injected clock
   to A's time (in real life: fix A's clock, then wait until real time passes the
   versions A wrote, at most the skew) — and every such dead letter is replayed
   (``DeadLetters.replay``, what ``bridge dlq replay`` does).  Then: converged, each of
   A's events applied exactly once through its replay (:mod:`fault_replays`), 0 lost, the
   crafted events still dead letters.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import pytest
from fault_checker import consumer_lag, read_side
from fault_scenario import FaultLog, ScenarioResult, run_scenario
from fault_stack import Deployment, Side, fast_config, in_process_pair, new_id

from bridge.envelope import Envelope, format_timestamp, utcnow
from bridge.routing.dlq import DeadLetters
from bridge.subjects import Subjects
from bridge.testing import NatsServer, PostgresServer

pytestmark = pytest.mark.faults

SKEW = timedelta(minutes=10)
FAR_FUTURE = "9999-12-31T23:59:59.999999Z"
CRAFTED = Counter({"future_version": 2, "unknown_origin": 1})
MIN_ACKED = 150


@dataclass
class SkewedClock:
    """An injected clock: real time plus ``offset`` (the scenario moves it)."""

    offset: timedelta = timedelta(0)

    def __call__(self) -> datetime:
        return utcnow() + self.offset


def bridge_of(side: Side) -> Any:
    return side.instances[0].app.state.service.bridge  # type: ignore[union-attr]


async def crafted_events(a: Side, b: Side) -> list[Envelope]:
    """The far-future payload on a record B holds, a far-future occurred_at, a forged origin."""
    reply = await b.instances[0].client.get("/organizations", params={"limit": 1})
    [live] = reply.json()["items"]
    now = format_timestamp(utcnow())

    def new_org(origin: str) -> dict[str, Any]:
        oid = new_id()
        return {"id": oid, "name": "Crafted", "domain": f"c{oid}.crafted.test",
                "active": True, "created_at": now, "updated_at": now, "origin": origin,
                "deleted_at": None}  # fmt: skip

    def envelope(payload: dict[str, Any], action: str, **extra: Any) -> Envelope:
        return Envelope(
            event_type=f"organization.{action}", producer=a.app, resource_type="organization",
            resource_id=str(payload["id"]), payload=payload, schema_version=2, **extra,
        )  # fmt: skip

    future_row = {**live, "name": "From the future", "updated_at": FAR_FUTURE, "deleted_at": None}
    return [
        envelope(future_row, "updated"),  # future_version (the domain's check)
        envelope(new_org(a.app), "created", occurred_at=FAR_FUTURE),  # future_version
        envelope(new_org("mallory"), "created", origin="mallory"),  # unknown_origin
    ]


async def publish_crafted(
    deployment: Deployment, faults: FaultLog, injected: set[int]
) -> list[Envelope]:
    a, b = deployment.a, deployment.b
    events = await crafted_events(a, b)
    nc = await nats.connect(list(deployment.nats_urls))
    try:
        js = nc.jetstream(timeout=5)
        for event in events:
            ack = await js.publish(
                Subjects(a.app, b.app).publish, event.to_bytes(), headers=event.headers()
            )
            injected.add(ack.seq)
    finally:
        await nc.close()
    faults.note("crafted-events", f"{a.app} -> {b.app}", far_future=2, forged_origin=1)
    return events


async def wait_drained(deployment: Deployment, timeout: float = 60.0) -> None:
    """A's outbox all sent, and B's durable with nothing pending: every event of A's settled."""
    a, b = deployment.a, deployment.b
    durable = Subjects(b.app, b.peer).durable
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = await read_side(a.database_url, a.app)
        lag = (await consumer_lag(deployment.nats_urls, deployment.stream, [durable]))[durable]
        if all(r["status"] == "sent" for r in state.outbox) and not (
            lag["num_pending"] or lag["num_ack_pending"]
        ):
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"{b.app} did not settle A's events within {timeout}s")


def history_of(results_dir: Path, scenario: str) -> list[dict[str, Any]]:
    writes: list[dict[str, Any]] = json.loads(
        (results_dir / f"{scenario}.history.json").read_text()
    )
    return writes


def concurrency_evidence(history: list[dict[str, Any]], a: str, b: str) -> dict[str, int]:
    acked = [w for w in history if w["outcome"] == "acked"]
    sides: dict[str, set[str]] = {}
    for write in acked:
        if write["record_id"] is not None:
            sides.setdefault(write["record_id"], set()).add(write["app"])
    after_ahead = [
        w for w in acked if w["app"] == b and (w["applied_before"] or {}).get("origin") == a
    ]
    return {
        "records_written_on_both_sides": sum(1 for s in sides.values() if s == {a, b}),
        "writes_on_b_after_applying_a_version_ahead": len(after_ahead),
    }


async def run_skew(
    *,
    scenario: str,
    title: str,
    own_nats: NatsServer,
    postgres: PostgresServer,
    unique: str,
    results_dir: Path,
    seed: int,
    max_clock_skew: str | None,
    replay: bool,
) -> tuple[ScenarioResult, Deployment, list[Envelope], int]:
    stream = f"faults-{unique}"
    clock_a, clock_b = SkewedClock(SKEW), SkewedClock()
    injected: set[int] = set()
    crafted: list[Envelope] = []
    replayed: list[int] = []
    replayed_letters: dict[str, str] = {}  # event id -> reason; a replay removes the letter
    bound = {"max_clock_skew": max_clock_skew} if max_clock_skew else {}
    async with AsyncExitStack() as stack:
        deployment = await in_process_pair(
            stack, postgres, unique, stream=stream, nats_urls=(own_nats.url,),
            a_overrides={"clock": clock_a}, clock=clock_b, **bound,
        )  # fmt: skip

        async def inject(faults: FaultLog) -> None:
            faults.note("clock-ahead", deployment.a.app, minutes=SKEW.total_seconds() / 60)
            crafted.extend(await publish_crafted(deployment, faults, injected))

        async def fix_clocks_and_replay(faults: FaultLog) -> None:
            await wait_drained(deployment)
            clock_b.offset = clock_a.offset  # fixed, and time caught up (module doc)
            faults.note("clocks-agree", deployment.b.app, moved_minutes=SKEW.total_seconds() / 60)
            letters: DeadLetters = bridge_of(deployment.b).dead_letters
            for letter in await letters.list(limit=1_000_000):
                if letter.reason == "future_version" and letter.original_seq not in injected:
                    replayed_letters[letter.envelope().event_id] = letter.reason
                    await letters.replay(letter.seq)
                    replayed.append(letter.seq)
            faults.note("dlq-replay", deployment.b.app, dead_letters=len(replayed))

        result = await run_scenario(
            scenario=scenario,
            title=title,
            topology="2 in-process services (A's clock 10 min ahead), 1 nats-server, local "
            "PostgreSQL; shared load: both sides write the same records",
            config=fast_config(
                max_clock_skew=max_clock_skew or "5m (default)", clock_skew_a="+10m"
            ),
            deployment=deployment,
            inject=inject,
            results_dir=results_dir,
            seed=seed,
            after=2.0,
            min_acked=MIN_ACKED,  # both sides keep writing the same records meanwhile
            converge_timeout=90.0,
            expected_dead_letters=CRAFTED,
            injected=injected,
            shared=True,
            settle=fix_clocks_and_replay if replay else None,
            replayed_reasons=("future_version",) if replay else (),
            replayed_letters=replayed_letters,
        )
    return result, deployment, crafted, len(replayed)


async def test_clock_10_min_ahead_within_the_bound_concurrent_writers(
    own_nats: NatsServer, postgres: PostgresServer, unique: str, results_dir: Path, seed: int
) -> None:
    scenario = "clock_skew_10m_accepted"
    result, deployment, crafted, _ = await run_skew(
        scenario=scenario,
        title="Clock 10 min ahead on A (max_clock_skew 15 min), both sides writing the "
        "same records, far-future and forged-origin events",
        own_nats=own_nats, postgres=postgres, unique=unique, results_dir=results_dir,
        seed=seed, max_clock_skew="15m", replay=False,
    )  # fmt: skip
    assert result.passed, result.failure_message()
    assert result.load["acked"] >= MIN_ACKED
    assert result.dead_letters == dict(CRAFTED)
    evidence = concurrency_evidence(
        history_of(results_dir, scenario), deployment.a.app, deployment.b.app
    )
    # The rule was exercised: records written on both sides, and writes on B made after
    # B applied one of A's versions 10 minutes ahead (each got a version after it).
    assert evidence["records_written_on_both_sides"] >= 5, evidence
    assert evidence["writes_on_b_after_applying_a_version_ahead"] >= 5, evidence
    assert len(crafted) == 3


async def test_clock_10_min_ahead_beyond_the_bound_dead_letters_then_replay(
    own_nats: NatsServer, postgres: PostgresServer, unique: str, results_dir: Path, seed: int
) -> None:
    scenario = "clock_skew_10m_over_bound"
    result, _deployment, _crafted, replayed = await run_skew(
        scenario=scenario,
        title="Clock 10 min ahead on A (default 5 min bound): A's events dead-lettered "
        "future_version, replayed after the clocks agree",
        own_nats=own_nats, postgres=postgres, unique=unique, results_dir=results_dir,
        seed=seed, max_clock_skew=None, replay=True,
    )  # fmt: skip
    assert result.passed, result.failure_message()
    assert result.load["acked"] >= MIN_ACKED
    assert replayed >= 20, replayed  # A's writes were refused, not applied, until replayed
    assert result.dead_letters == {
        "future_version": replayed + CRAFTED["future_version"],
        "unknown_origin": CRAFTED["unknown_origin"],
    }
    assert result.events_lost == 0 and result.duplicates_applied == 0
