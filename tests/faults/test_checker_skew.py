"""The checker's rules for the clock-skew scenario, each shown to fail when broken.

Concurrent writers (``lww=True``, :mod:`fault_lww`) and replayed dead letters
(``replayed_reasons``, :mod:`fault_replays`), on a small synthetic world: an organization
created on A, updated on A with A's clock 10 minutes ahead, and — concurrently, before B
had A's update — updated on B.  Last-writer-wins keeps A's version; B's write, made
before B applied it, rightly loses.
"""

from __future__ import annotations

import copy
import dataclasses
from collections import Counter
from typing import Any

from fault_checker import SideState, StreamMessage, check
from fault_history import History

A, B = "sa", "sb"
A_TO_B, B_TO_A = f"{A}.sync.{B}", f"{B}.sync.{A}"
ORG = "11111111-1111-1111-1111-111111111111"
T1 = "2026-01-01T00:00:00.000001Z"  # created on A
TB = "2026-01-01T00:00:05.000000Z"  # B's concurrent update (B's clock)
TA = "2026-01-01T00:10:01.000000Z"  # A's update (A's clock, 10 min ahead)
TA_NEXT = "2026-01-01T00:10:01.000001Z"  # B's write after applying A's: just after it
E1, E2, E3, E4 = (f"e0000000-0000-0000-0000-00000000000{n}" for n in range(1, 5))


def org_row(name: str, updated_at: str, origin: str) -> dict[str, Any]:
    return {
        "id": ORG, "name": name, "domain": "acme.test", "active": True,
        "created_at": T1, "updated_at": updated_at, "origin": origin, "deleted_at": None,
    }  # fmt: skip


def api(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "deleted_at"}


def box(event_id: str, subject: str, status: str) -> dict[str, Any]:
    return {"event_id": event_id, "subject": subject, "status": status}


def message(seq: int, subject: str, event_id: str, updated_at: str, **extra: Any) -> StreamMessage:
    return StreamMessage(
        seq, subject, event_id, event_id, "organization", ORG, updated_at,
        extra.pop("reason", None), **extra,
    )  # fmt: skip


def world() -> tuple[History, SideState, SideState, list[StreamMessage]]:
    history = History()
    created, on_a, on_b = org_row("acme", T1, A), org_row("A", TA, A), org_row("B", TB, B)
    history.record(
        worker=0, app=A, instance="a-0", kind="create", resource="organization",
        record_id=None, request={"name": "acme", "domain": "acme.test"}, outcome="acked",
        status=201, response=api(created), error=None, started=0.0,
    )  # fmt: skip
    history.record(
        worker=1, app=A, instance="a-0", kind="update", resource="organization",
        record_id=ORG, request={"name": "A"}, outcome="acked", status=200,
        response=api(on_a), error=None, started=1.0,
        applied_before={"updated_at": T1, "origin": A},
    )  # fmt: skip
    history.record(
        worker=2, app=B, instance="b-0", kind="update", resource="organization",
        record_id=ORG, request={"name": "B"}, outcome="acked", status=200,
        response=api(on_b), error=None, started=1.0,
        applied_before={"updated_at": T1, "origin": A},  # B did not have A's update yet
    )  # fmt: skip
    rows = {"organization": {ORG: on_a}, "user": {}}
    a = SideState(
        A, copy.deepcopy(rows), [box(E1, A_TO_B, "sent"), box(E2, A_TO_B, "sent")],
        [box(E3, B_TO_A, "processed")],  # stale on A: its version is older
    )  # fmt: skip
    b = SideState(
        B, copy.deepcopy(rows), [box(E3, B_TO_A, "sent")],
        [box(E1, A_TO_B, "processed"), box(E2, A_TO_B, "processed")],
    )  # fmt: skip
    messages = [
        message(1, A_TO_B, E1, T1),
        message(2, A_TO_B, E2, TA),
        message(3, B_TO_A, E3, TB),
    ]
    return history, a, b, messages


def test_a_write_made_before_its_side_applied_the_winner_may_lose() -> None:
    history, a, b, messages = world()
    assert check(history, a, b, messages, lww=True).violations == []
    # The linear rule (owned records) would call B's write lost: it is the newest in time.
    linear = check(history, a, b, messages)
    assert any("newest acked write" in v for v in linear.violations)


def write_after_applying(world_: tuple[History, SideState, SideState, list[StreamMessage]]) -> None:
    """B writes again after it applied A's version: its version must be just after it."""
    history, a, b, messages = world_
    last = org_row("B2", TA_NEXT, B)
    history.record(
        worker=2, app=B, instance="b-0", kind="update", resource="organization",
        record_id=ORG, request={"name": "B2"}, outcome="acked", status=200,
        response=api(last), error=None, started=2.0,
        applied_before={"updated_at": TA, "origin": A},
    )  # fmt: skip
    b.outbox.append(box(E4, B_TO_A, "sent"))
    a.inbox.append(box(E4, B_TO_A, "processed"))
    messages.append(message(4, B_TO_A, E4, TA_NEXT))
    for side in (a, b):
        side.rows["organization"][ORG] = dict(last)


def test_a_write_acknowledged_after_applying_x_never_loses_to_x() -> None:
    scene = world()
    write_after_applying(scene)
    history, a, b, messages = scene
    assert check(history, a, b, messages, lww=True).violations == []
    # Both sides end at A's version X, which B had applied before acknowledging its write.
    for side in (a, b):
        side.rows["organization"][ORG] = org_row("A", TA, A)
    verdict = check(history, a, b, messages, lww=True)
    assert verdict.events_lost == 1
    assert any("its side had applied before acknowledging it" in v for v in verdict.violations)


def test_a_local_version_not_after_the_applied_one_is_reported() -> None:
    scene = world()
    write_after_applying(scene)
    history, a, b, messages = scene
    # B's write got its own clock's time (TB + 1 s), not a version after A's: the floor broke.
    broken = org_row("B2", "2026-01-01T00:00:06.000000Z", B)
    history.writes[-1] = dataclasses.replace(history.writes[-1], response=api(broken))
    verdict = check(history, a, b, messages, lww=True)
    assert any("not greater" in v for v in verdict.violations)


def test_the_final_row_must_be_the_newest_acked_write_s_row() -> None:
    history, a, b, messages = world()
    for side in (a, b):
        side.rows["organization"][ORG]["name"] = "nobody wrote this"
    verdict = check(history, a, b, messages, lww=True)
    assert any("but not its content" in v for v in verdict.violations)
    history, a, b, messages = world()
    newer = org_row("ghost", "2026-01-01T00:20:00.000000Z", A)
    for side in (a, b):
        side.rows["organization"][ORG] = dict(newer)
    verdict = check(history, a, b, messages, lww=True)
    assert any("no indeterminate write explains it" in v for v in verdict.violations)
    # ... and an acked version older than the final one is not "lost" while a newer
    # acked one is missing: losing A's acked version to B's older one is.
    history, a, b, messages = world()
    for side in (a, b):
        side.rows["organization"][ORG] = org_row("B", TB, B)
    verdict = check(history, a, b, messages, lww=True)
    assert verdict.events_lost == 1 and any("lost to the older" in v for v in verdict.violations)


REPLAY = "f0000000-0000-0000-0000-000000000002"


def replayed_world() -> tuple[History, SideState, SideState, list[StreamMessage]]:
    """A's update E2 was dead-lettered by B (future_version), then replayed and applied."""
    history, a, b, messages = world()
    b.inbox[1] = box(E2, A_TO_B, "dead_lettered")
    b.inbox.append(box(REPLAY, A_TO_B, "processed"))
    messages += [
        message(4, f"{B}.sync.dlq", E2, TA, reason="future_version"),
        message(5, A_TO_B, REPLAY, TA, causation_id=E2),
    ]
    return history, a, b, messages


def test_a_replayed_dead_letter_counts_as_its_event_applied_once() -> None:
    history, a, b, messages = replayed_world()
    replayed = {"future_version"}
    verdict = check(history, a, b, messages, lww=True, replayed_reasons=replayed)
    assert verdict.violations == []
    assert verdict.dead_letters == {"future_version": 1}
    # Without folding replays: a dead letter nobody expected, an event no outbox explains.
    plain = check(history, a, b, messages, lww=True)
    assert any("unexpected dead letters" in v for v in plain.violations)
    assert any("no outbox row" in v for v in plain.violations)
    # A replay that never applied is a lost event; two applied replays, a double application.
    history, a, b, messages = replayed_world()
    b.inbox[-1] = box(REPLAY, A_TO_B, "failed")
    verdict = check(history, a, b, messages, lww=True, replayed_reasons=replayed)
    assert verdict.events_lost >= 1 and any("never applied" in v for v in verdict.violations)
    history, a, b, messages = replayed_world()
    again = "f0000000-0000-0000-0000-000000000003"
    b.inbox.append(box(again, A_TO_B, "processed"))
    messages.append(message(6, A_TO_B, again, TA, causation_id=E2))
    verdict = check(history, a, b, messages, lww=True, replayed_reasons=replayed)
    assert verdict.duplicates_applied == 1
    # A dead letter of another reason is not folded: it stays unexpected.
    history, a, b, messages = replayed_world()
    messages[3] = message(4, f"{B}.sync.dlq", E2, TA, reason="conflict")
    verdict = check(
        history, a, b, messages, lww=True, replayed_reasons=replayed,
        expected_dead_letters=Counter(),
    )  # fmt: skip
    assert any("after a 'conflict' dead letter" in v for v in verdict.violations)
