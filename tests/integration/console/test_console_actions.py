"""The console's actions over HTTP (ASGI), against a real bridge: who may act, CSRF,
confirmation, replay and purge, and the audit trail.

Every refused action must leave the dead letter where it was: the tests check the
DLQ itself, not only the status code.
"""

from __future__ import annotations

import re

import pytest
from console_support import TOKEN, ConsoleStack, console_stack, eventually
from sqlalchemy import select

from bridge.errors import DeadLetterNotFoundError
from bridge.integrations.console.auth import SESSION_COOKIE, Signer
from bridge.integrations.console.options import ConsoleOptions
from bridge.schema import console_audit
from bridge.testing import NatsServer


async def one_letter(stack: ConsoleStack, record: str = "r1") -> int:
    """A replayable dead letter of ``record`` (the handler rejects it until told not to)."""
    stack.reject.add(record)
    await stack.publish_as_peer(record)
    letters = await stack.dead_letters(1)
    return letters[-1].seq


async def still_stored(stack: ConsoleStack, seq: int) -> bool:
    assert stack.bridge.dead_letters is not None
    try:
        await stack.bridge.dead_letters.show(seq)
    except DeadLetterNotFoundError:
        return False
    return True


async def audit_rows(stack: ConsoleStack) -> list[dict[str, object]]:
    async with stack.bridge.engine.connect() as conn:
        rows = await conn.execute(select(console_audit).order_by(console_audit.c.id))
        return [dict(row) for row in rows.mappings()]


async def test_an_action_without_signing_in_is_refused_and_audited(stack: ConsoleStack) -> None:
    seq = await one_letter(stack)
    response = await stack.client.post(
        "/console/dlq/replay", data={"one": str(seq), "confirm": "yes"}
    )
    assert response.status_code == 403
    assert "sign in with the operator token first" in response.text
    assert await still_stored(stack, seq)
    (row,) = await audit_rows(stack)
    assert (row["action"], row["outcome"], row["actor"]) == ("replay", "refused", "anonymous")


async def test_a_wrong_token_signs_nobody_in(stack: ConsoleStack) -> None:
    seq = await one_letter(stack)
    refused = await stack.sign_in("operator-token-9876543210")
    assert refused.status_code == 403
    assert "wrong operator token" in refused.text
    assert SESSION_COOKIE not in stack.client.cookies
    response = await stack.client.post(
        "/console/dlq/purge", data={"one": str(seq), "confirm": "yes"}
    )
    assert response.status_code == 403
    assert await still_stored(stack, seq)
    outcomes = [(r["action"], r["outcome"]) for r in await audit_rows(stack)]
    assert outcomes == [("sign_in", "refused"), ("purge", "refused")]


async def test_the_sign_in_cookie_is_http_only_same_site_strict_on_the_console_path(
    stack: ConsoleStack,
) -> None:
    response = await stack.sign_in()
    assert response.status_code == 303
    cookie = response.headers["set-cookie"].lower()
    for flag in ("httponly", "samesite=strict", "path=/console", "max-age=28800"):
        assert flag in cookie, cookie
    assert TOKEN.lower() not in cookie


async def test_a_cookie_forged_with_another_token_or_altered_is_no_session(
    stack: ConsoleStack,
) -> None:
    seq = await one_letter(stack)
    forged = Signer("another-token-0123456789", operator="operator", ttl=3600).issue()
    stack.client.cookies.set(SESSION_COOKIE, forged, domain="console.test", path="/console")
    refused = await stack.client.post("/console/dlq/purge", data={"one": str(seq), "csrf": "x"})
    assert refused.status_code == 403 and "sign in" in refused.text
    await stack.sign_in()
    real = stack.client.cookies[SESSION_COOKIE]
    altered = real[:-1] + ("0" if real[-1] != "0" else "1")
    stack.client.cookies.set(SESSION_COOKIE, altered, domain="console.test", path="/console")
    refused = await stack.client.post("/console/dlq/purge", data={"one": str(seq), "csrf": "x"})
    assert refused.status_code == 403 and "sign in" in refused.text
    assert await still_stored(stack, seq)


async def test_a_missing_or_wrong_csrf_token_is_refused(stack: ConsoleStack) -> None:
    seq = await one_letter(stack)
    await stack.sign_in()
    csrf = await stack.csrf()
    for data in ({"one": str(seq), "confirm": "yes"},
                 {"one": str(seq), "confirm": "yes", "csrf": "0" * len(csrf)},
                 {"one": str(seq), "confirm": "yes", "csrf": ""}):  # fmt: skip
        response = await stack.client.post("/console/dlq/purge", data=data)
        assert response.status_code == 403
        assert "CSRF token is missing or wrong" in response.text
    assert await still_stored(stack, seq)


async def test_a_csrf_token_of_another_session_is_refused(stack: ConsoleStack) -> None:
    seq = await one_letter(stack)
    await stack.sign_in()
    old_csrf = await stack.csrf()
    stack.client.cookies.clear()
    await stack.sign_in()  # a new session, a new nonce
    response = await stack.client.post(
        "/console/dlq/purge", data={"one": str(seq), "confirm": "yes", "csrf": old_csrf}
    )
    assert response.status_code == 403
    assert await still_stored(stack, seq)


async def test_a_request_from_another_origin_is_refused_even_signed_in(stack: ConsoleStack) -> None:
    seq = await one_letter(stack)
    await stack.sign_in()
    csrf = await stack.csrf()
    for origin in ("https://evil.example", "null"):
        response = await stack.client.post(
            "/console/dlq/purge",
            data={"one": str(seq), "confirm": "yes", "csrf": csrf},
            headers={"Origin": origin},
        )
        assert response.status_code == 403
        assert "cross-site request refused" in response.text
    assert await still_stored(stack, seq)
    same = await stack.client.post(
        "/console/dlq/purge",
        data={"one": str(seq), "csrf": csrf},
        headers={"Origin": "http://console.test"},
    )
    assert same.status_code == 200  # the confirmation page


async def test_replay_asks_for_confirmation_then_replays_and_the_letter_leaves(
    stack: ConsoleStack,
) -> None:
    seq = await one_letter(stack, "r7")
    await stack.sign_in()
    csrf = await stack.csrf()
    confirm = await stack.client.post("/console/dlq/replay", data={"one": str(seq), "csrf": csrf})
    assert confirm.status_code == 200
    assert "Replay 1 dead letter?" in confirm.text
    assert re.search(rf'name="seq" value="{seq}"', confirm.text)
    assert await still_stored(stack, seq), "the first step changes nothing"
    assert stack.handled == []
    stack.reject.clear()
    done = await stack.client.post(
        "/console/dlq/replay", data={"seq": str(seq), "confirm": "yes", "csrf": csrf}
    )
    assert done.status_code == 200
    assert "Replay: ok" in done.text
    assert not await still_stored(stack, seq)
    page = await stack.client.get("/console/")
    assert f'id="letter-{seq}"' not in page.text
    await eventually(lambda: "r7" in stack.handled, what="the replayed event applied")
    assert stack.handled == ["r7"]
    rows = await audit_rows(stack)
    assert [(r["action"], r["outcome"]) for r in rows] == [("sign_in", "ok"), ("replay", "ok")]
    assert rows[-1]["target"] == f"dead letters {seq}"
    assert rows[-1]["actor"] == "operator"


async def test_replay_all_matching_resolves_the_filter_and_acts_only_on_what_was_confirmed(
    stack: ConsoleStack,
) -> None:
    stack.reject.update({"a", "b"})
    await stack.publish_as_peer("a")
    await stack.publish_as_peer("b")
    await stack.publish_as_peer("m", data=b"not json", headers={})
    letters = await stack.dead_letters(3)
    rejected = [letter.seq for letter in letters if letter.reason != "malformed"]
    await stack.sign_in()
    csrf = await stack.csrf()
    reason = next(letter.reason for letter in letters if letter.reason != "malformed")
    confirm = await stack.client.post(
        "/console/dlq/replay", data={"scope": "all", "reason": reason, "csrf": csrf}
    )
    assert "Replay 2 dead letters?" in confirm.text
    listed = [int(s) for s in re.findall(r'name="seq" value="(\d+)"', confirm.text)]
    assert listed == rejected
    stack.reject.clear()
    await stack.publish_as_peer("c")  # arrives after the confirmation: not part of it
    done = await stack.client.post(
        "/console/dlq/replay",
        data={"seq": [str(s) for s in listed], "confirm": "yes", "csrf": csrf},
    )
    assert "Replay: ok" in done.text
    remaining = {letter.seq for letter in await stack.bridge.dead_letters.list()}  # type: ignore[union-attr]
    assert not remaining & set(rejected)
    assert any(letter.reason == "malformed" for letter in await stack.dead_letters(1))


async def test_a_malformed_letter_is_not_replayed_and_is_named_with_its_reason(
    stack: ConsoleStack,
) -> None:
    await stack.publish_as_peer("m", data=b"<not json>", headers={})
    (letter,) = await stack.dead_letters(1)
    await stack.sign_in()
    csrf = await stack.csrf()
    done = await stack.client.post(
        "/console/dlq/replay", data={"seq": str(letter.seq), "confirm": "yes", "csrf": csrf}
    )
    assert "Replay: failed" in done.text
    assert "malformed" in done.text
    assert await still_stored(stack, letter.seq)
    rows = await audit_rows(stack)
    assert (rows[-1]["action"], rows[-1]["outcome"]) == ("replay", "failed")


async def test_purge_removes_letters_but_never_a_message_that_is_not_a_dead_letter(
    stack: ConsoleStack,
) -> None:
    seq = await one_letter(stack)
    assert stack.bridge.dead_letters is not None
    not_a_letter = (await stack.bridge.dead_letters.show(seq)).original_seq  # the original event
    await stack.sign_in()
    csrf = await stack.csrf()
    done = await stack.client.post(
        "/console/dlq/purge",
        data={"seq": [str(seq), str(not_a_letter)], "confirm": "yes", "csrf": csrf},
    )
    assert "Purge: partial" in done.text
    assert f"not dead letters of this app: {not_a_letter}" in done.text
    assert not await still_stored(stack, seq)
    kept = await stack.bridge.connection.js.get_msg(stack.config.stream_name, seq=not_a_letter)
    assert kept.subject == stack.config.subjects.consume


async def test_get_never_acts(stack: ConsoleStack) -> None:
    seq = await one_letter(stack)
    await stack.sign_in()
    for path in ("/console/dlq/replay", "/console/dlq/purge", "/console/logout"):
        response = await stack.client.get(path, params={"one": seq, "confirm": "yes"})
        assert response.status_code == 405
    assert await still_stored(stack, seq)


@pytest.mark.parametrize(
    ("data", "headers", "status", "text"),
    [
        (b"x" * (64 * 1024 + 1), {"content-type": "application/x-www-form-urlencoded"}, 413,
         "larger than"),
        (b'{"one": 1}', {"content-type": "application/json"}, 415, "only HTML form posts"),
        (b"one=abc", {"content-type": "application/x-www-form-urlencoded"}, 400,
         "is not a dead letter"),
        (b"one=%C2%B2", {"content-type": "application/x-www-form-urlencoded"}, 400,
         "is not a dead letter"),
        (b"\xff\xfe", {"content-type": "application/x-www-form-urlencoded"}, 400, "not UTF-8"),
        ("&".join(f"seq={n}" for n in range(1, 1002)).encode(),
         {"content-type": "application/x-www-form-urlencoded"}, 400, "at most 1000"),
        (b"csrf=", {"content-type": "application/x-www-form-urlencoded"}, 400,
         "no dead letter chosen"),
    ],
)  # fmt: skip
async def test_a_bad_form_is_refused_with_a_reason(
    stack: ConsoleStack, data: bytes, headers: dict[str, str], status: int, text: str
) -> None:
    seq = await one_letter(stack)
    await stack.sign_in()
    csrf = await stack.csrf()
    if data.startswith((b"one=", b"seq=", b"csrf=")):
        data = data.replace(b"csrf=", b"") + b"&csrf=" + csrf.encode()
    response = await stack.client.post("/console/dlq/purge", content=data, headers=headers)
    assert response.status_code == status, response.text
    assert text in response.text
    assert await still_stored(stack, seq)


async def test_without_a_token_the_console_is_read_only(
    nats_server: NatsServer, database_url: str, unique: str
) -> None:
    async with console_stack(
        nats_server.url, database_url, unique, options=ConsoleOptions(sample_interval=0.2)
    ) as stack:
        seq = await one_letter(stack)
        page = await stack.client.get("/console/")
        assert 'id="read-only"' in page.text and 'id="sign-in"' not in page.text
        assert 'formaction="/console/dlq/replay"' not in page.text
        refused = await stack.sign_in()
        assert refused.status_code == 403 and "read-only" in refused.text
        action = await stack.client.post("/console/dlq/replay", data={"one": str(seq)})
        assert action.status_code == 403 and "read-only" in action.text
        assert await still_stored(stack, seq)


async def test_failed_sign_ins_are_throttled(stack: ConsoleStack) -> None:
    for _ in range(10):
        assert (await stack.sign_in("x" * 20)).status_code == 403
    throttled = await stack.sign_in()  # even the right token, for the rest of the minute
    assert throttled.status_code == 429
    assert SESSION_COOKIE not in stack.client.cookies


async def test_sign_out_ends_the_session(stack: ConsoleStack) -> None:
    await stack.sign_in()
    csrf = await stack.csrf()
    response = await stack.client.post("/console/logout", data={"csrf": csrf})
    assert response.status_code == 303
    assert SESSION_COOKIE not in stack.client.cookies
    page = await stack.client.get("/console/")
    assert 'id="sign-in"' in page.text


async def test_a_confirmation_posted_twice_replays_once(stack: ConsoleStack) -> None:
    seq = await one_letter(stack, "r9")
    await stack.sign_in()
    csrf = await stack.csrf()
    stack.reject.clear()
    form = {"seq": str(seq), "confirm": "yes", "csrf": csrf}
    first = await stack.client.post("/console/dlq/replay", data=form)
    assert "Replay: ok" in first.text
    again = await stack.client.post("/console/dlq/replay", data=form)  # back, resubmit
    assert "Replay: failed" in again.text and "not_found" in again.text
    await eventually(lambda: "r9" in stack.handled, what="the replayed event applied")
    assert stack.handled == ["r9"]
    outcomes = [r["outcome"] for r in await audit_rows(stack) if r["action"] == "replay"]
    assert outcomes == ["ok", "failed"]
