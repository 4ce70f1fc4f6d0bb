"""The console's token, sign-in cookie, CSRF token and origin rules (pure logic)."""

from __future__ import annotations

import pytest

from bridge.integrations.console.auth import Signer, same_origin

TOKEN = "operator-token-0123456789"


def signer(now: float = 1_000_000.0, token: str = TOKEN, ttl: float = 3600.0) -> Signer:
    return Signer(token, operator="alice", ttl=ttl, clock=lambda: now)


@pytest.mark.parametrize(
    "given",
    ["", "operator-token-012345678", "operator-token-01234567890", TOKEN.upper(), TOKEN + "\x00",
     " " + TOKEN, "é" * 25],
)  # fmt: skip
def test_only_the_exact_token_signs_in(given: str) -> None:
    assert signer().check_token(TOKEN)
    assert not signer().check_token(given)


def test_a_cookie_it_issued_is_a_session_of_its_operator_until_the_ttl() -> None:
    cookie = signer().issue()
    session = signer(now=1_000_000.0 + 3600).session(cookie)
    assert session is not None and session.operator == "alice"
    assert signer(now=1_000_000.0 + 3601).session(cookie) is None  # expired
    assert signer(now=1_000_000.0 - 3600).session(cookie) is None  # issued in the future


def test_two_sign_ins_are_two_sessions_with_their_own_csrf_tokens() -> None:
    first, second = signer().session(signer().issue()), signer().session(signer().issue())
    assert first is not None and second is not None and first.nonce != second.nonce
    s = signer()
    assert s.check_csrf(first, s.csrf(first))
    assert not s.check_csrf(second, s.csrf(first))
    assert not s.check_csrf(first, None) and not s.check_csrf(first, "")


def test_a_cookie_of_another_token_forged_or_altered_is_no_session() -> None:
    cookie = signer().issue()
    assert signer(token="another-token-0123456789").session(cookie) is None
    version, issued, nonce, mac = cookie.split(".")
    for forged in (
        f"{version}.{int(issued) + 1}.{nonce}.{mac}",  # a later issue time, same mac
        f"{version}.{issued}.{nonce}x.{mac}",
        f"{version}.{issued}.{nonce}.{mac[:-1]}",
        f"v2.{issued}.{nonce}.{mac}",
        f"{version}.{issued}.{nonce}",
        f"{version}.abc.{nonce}.{mac}",
        "",
        "." * 3,
        cookie + "." + mac,
        "v1." + "9" * 300,
    ):
        assert signer().session(forged) is None, forged
    assert signer().session(None) is None


def test_the_csrf_token_depends_on_the_token_too() -> None:
    session = signer().session(signer().issue())
    assert session is not None
    other = signer(token="another-token-0123456789")
    assert not signer().check_csrf(session, other.csrf(session))


@pytest.mark.parametrize(
    ("headers", "allowed"),
    [
        ({"host": "ops.example:8400"}, True),  # a script without Origin: cookie + CSRF decide
        ({"host": "ops.example:8400", "origin": "http://ops.example:8400"}, True),
        ({"host": "ops.example:8400", "origin": "https://ops.example:8400"}, True),
        ({"host": "ops.example:8400", "origin": "https://evil.example"}, False),
        ({"host": "ops.example:8400", "origin": "http://ops.example:8401"}, False),
        ({"host": "ops.example:8400", "origin": "null"}, False),
        ({"host": "ops.example:8400", "referer": "http://ops.example:8400/console/"}, True),
        ({"host": "ops.example:8400", "referer": "http://evil.example/x"}, False),
        ({"host": "ops.example:8400", "origin": "http://[::1"}, False),
        ({"origin": "http://ops.example:8400"}, False),  # no Host to compare with
    ],
)
def test_same_origin(headers: dict[str, str], allowed: bool) -> None:
    assert same_origin(headers) is allowed
