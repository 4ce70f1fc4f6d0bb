"""The checker itself: each promise it checks is shown to fail on a history that breaks it.

Pure logic (no servers): a small, consistent world — one organization created on A and
updated on B, both events in the stream and processed — is checked clean, then broken
one way at a time.  Without these, a scenario that "passes" could be a checker that
cannot fail.
"""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

from fault_checker import SideState, StreamMessage, check
from fault_history import History, matches

A, B = "sa", "sb"
ORG = "11111111-1111-1111-1111-111111111111"
T1, T2 = "2026-01-01T00:00:00.000001Z", "2026-01-01T00:00:01.000000Z"
E1, E2 = "e0000000-0000-0000-0000-000000000001", "e0000000-0000-0000-0000-000000000002"


def org_row(name: str, updated_at: str, origin: str) -> dict[str, Any]:
    return {
        "id": ORG, "name": name, "domain": "acme.test", "active": True,
        "created_at": T1, "updated_at": updated_at, "origin": origin, "deleted_at": None,
    }  # fmt: skip


def world() -> tuple[History, SideState, SideState, list[StreamMessage]]:
    history = History()
    created = org_row("acme", T1, A)
    updated = org_row("acme 2", T2, B)
    api = {k: v for k, v in created.items() if k != "deleted_at"}
    history.record(
        worker=0, app=A, instance="a-0", kind="create", resource="organization",
        record_id=None, request={"name": "acme", "domain": "acme.test"}, outcome="acked",
        status=201, response=api, error=None, started=0.0,
    )  # fmt: skip
    history.record(
        worker=0, app=B, instance="b-0", kind="update", resource="organization",
        record_id=ORG, request={"name": "acme 2"}, outcome="acked", status=200,
        response={k: v for k, v in updated.items() if k != "deleted_at"}, error=None,
        started=1.0,
    )  # fmt: skip
    rows = {"organization": {ORG: updated}, "user": {}}

    def box(event_id: str, subject: str, status: str) -> dict[str, Any]:
        return {"event_id": event_id, "subject": subject, "status": status}

    a = SideState(
        A, copy.deepcopy(rows), [box(E1, f"{A}.sync.{B}", "sent")],
        [box(E2, f"{B}.sync.{A}", "processed")],
    )  # fmt: skip
    b = SideState(
        B, copy.deepcopy(rows), [box(E2, f"{B}.sync.{A}", "sent")],
        [box(E1, f"{A}.sync.{B}", "processed")],
    )  # fmt: skip
    messages = [
        StreamMessage(1, f"{A}.sync.{B}", E1, E1, "organization", ORG, T1, None),
        StreamMessage(2, f"{B}.sync.{A}", E2, E2, "organization", ORG, T2, None),
    ]
    return history, a, b, messages


def test_a_consistent_world_passes() -> None:
    verdict = check(*world())
    assert verdict.violations == []
    assert verdict.events_written == 2 and verdict.events_lost == 0


def test_divergent_rows_are_reported() -> None:
    history, a, b, messages = world()
    b.rows["organization"][ORG]["active"] = False
    verdict = check(history, a, b, messages)
    assert any(v.startswith("diverged organization") for v in verdict.violations)


def test_final_state_older_than_the_newest_acked_write_is_a_lost_write() -> None:
    history, a, b, messages = world()
    for side in (a, b):
        side.rows["organization"][ORG] = org_row("acme", T1, A)
    verdict = check(history, a, b, messages)
    assert verdict.events_lost >= 1
    assert any("newest acked write" in v for v in verdict.violations)


def test_a_later_indeterminate_write_may_explain_a_newer_row() -> None:
    history, a, b, messages = world()
    history.record(
        worker=0, app=A, instance="a-0", kind="update", resource="organization",
        record_id=ORG, request={"name": "maybe"}, outcome="indeterminate", status=None,
        response=None, error="ReadError", started=2.0,
    )  # fmt: skip
    newer = org_row("maybe", "2026-01-01T00:00:02.000000Z", A)
    for side in (a, b):
        side.rows["organization"][ORG] = dict(newer)
    a.outbox.append({"event_id": "e3", "subject": f"{A}.sync.{B}", "status": "sent"})
    b.inbox.append({"event_id": "e3", "subject": f"{A}.sync.{B}", "status": "processed"})
    messages.append(
        StreamMessage(
            3, f"{A}.sync.{B}", "e3", "e3", "organization", ORG, newer["updated_at"], None
        )
    )
    assert check(history, a, b, messages).violations == []
    # ... but not a newer row nobody wrote.
    for side in (a, b):
        side.rows["organization"][ORG]["name"] = "nobody"
    assert check(history, a, b, messages).events_lost == 1


def test_event_missing_from_the_stream_or_unprocessed_is_lost() -> None:
    history, a, b, messages = world()
    verdict = check(history, a, b, messages[1:])
    assert verdict.events_lost >= 2  # the outbox row's event and the acked write's event
    history, a, b, messages = world()
    b.inbox[0]["status"] = "failed"
    verdict = check(history, a, b, messages)
    assert any("not processed" in v for v in verdict.violations)


def test_echo_and_double_application_are_reported() -> None:
    history, a, b, messages = world()
    b.outbox.append({"event_id": "echo", "subject": f"{B}.sync.{A}", "status": "sent"})
    verdict = check(history, a, b, messages)
    assert verdict.echoes == 1
    history, a, b, messages = world()
    a.inbox.append({"event_id": E1, "subject": f"{A}.sync.{B}", "status": "processed"})
    verdict = check(history, a, b, messages)
    assert verdict.duplicates_applied >= 1


def test_duplicate_publishes_are_counted_but_absorbed() -> None:
    history, a, b, messages = world()
    messages.append(StreamMessage(3, f"{A}.sync.{B}", E1, E1, "organization", ORG, T1, None))
    verdict = check(history, a, b, messages)
    assert verdict.duplicates_published == 1 and verdict.violations == []


def test_phantom_rows_and_unexpected_dead_letters_are_reported() -> None:
    history, a, b, messages = world()
    ghost = {**org_row("ghost", T1, A), "id": "22222222-2222-2222-2222-222222222222"}
    for side in (a, b):
        side.rows["organization"][ghost["id"]] = dict(ghost, domain="ghost.test")
    messages.append(StreamMessage(3, f"{A}.sync.dlq", "d", E1, "organization", ORG, T1, "rejected"))
    verdict = check(history, a, b, messages)
    assert any(v.startswith("phantom organization") for v in verdict.violations)
    assert verdict.dead_letters == {"rejected": 1} and verdict.unexpected_dead_letters == 1
    expected = Counter({"rejected": 1})
    verdict = check(history, a, b, messages, expected_dead_letters=expected)
    assert verdict.unexpected_dead_letters == 0


def test_an_indeterminate_create_explains_its_row_whatever_form_its_ids_were_sent_in() -> None:
    """The load sends ids as decimal text; the services store integers."""
    history, a, b, messages = world()
    org_id = 248189966766081
    request = {"organization_id": str(org_id), "name": "u", "email": "u@example.com"}
    history.record(
        worker=0, app=A, instance="a-0", kind="create", resource="user", record_id=None,
        request=request, outcome="indeterminate", status=None, response=None,
        error="RemoteProtocolError", started=2.0,
    )  # fmt: skip
    user = {
        "id": 248189968633858, "organization_id": org_id, "name": "u",
        "email": "u@example.com", "role": "member", "active": True, "created_at": T2,
        "updated_at": T2, "origin": A, "deleted_at": None,
    }  # fmt: skip
    for side in (a, b):
        side.rows["user"][user["id"]] = dict(user)
    assert not [v for v in check(history, a, b, messages).violations if "phantom" in v]
    for side in (a, b):  # ... but not a row of another organization
        side.rows["user"][user["id"]]["organization_id"] = org_id + 1
    assert any(v.startswith("phantom user") for v in check(history, a, b, messages).violations)
    assert matches({"n": 7}, {"n": "7"}) and not matches({"n": 7}, {"n": "07x"})
    assert not matches({"flag": True}, {"flag": "1"})
