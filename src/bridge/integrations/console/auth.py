"""Who may act in the console: the operator token, the sign-in cookie and CSRF tokens.

No server-side session state: everything is derived from the configured token, so a
sign-in works across the processes of an app that mount the console, and changing
the token signs everyone out.

- :meth:`Signer.check_token`: the token typed into the sign-in form, compared in
  constant time (:func:`hmac.compare_digest` over SHA-256 digests, so not even the
  length leaks).
- :meth:`Signer.issue` / :meth:`Signer.session`: the sign-in cookie,
  ``v1.<issued>.<nonce>.<mac>`` with an HMAC-SHA256 under a key derived from the
  token; a cookie that is forged, altered, signed under another token or older than
  ``session_ttl`` is no session.  It is set ``HttpOnly``, ``SameSite=Strict``, on the
  console's path (:mod:`.app`).
- :meth:`Signer.csrf` / :meth:`Signer.check_csrf`: every action form carries a token
  bound to the session's nonce (a per-session synchroniser token): a page of another
  site can neither read it nor, with a ``SameSite=Strict`` cookie, send the cookie.
- :func:`same_origin`: a browser's ``Origin`` (or ``Referer``) header naming another
  host refuses the request as well (defence in depth; a request without either, from
  a script, still needs the cookie and the CSRF token).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

#: Name of the sign-in cookie.
SESSION_COOKIE = "bridge_console_session"
_VERSION = "v1"


@dataclass(frozen=True, slots=True)
class Session:
    """A valid sign-in: who (the options' operator name), since when, its nonce."""

    operator: str
    issued: int
    nonce: str


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


class Signer:
    """Checks the token and signs and verifies cookies and CSRF tokens (module doc)."""

    def __init__(
        self,
        token: str,
        *,
        operator: str,
        ttl: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._token_digest = _digest(token)
        self._key = hmac.new(token.encode(), b"bridge-console-v1", hashlib.sha256).digest()
        self.operator = operator
        self._ttl = ttl
        self._clock = clock

    def check_token(self, given: str) -> bool:
        """Whether ``given`` is the operator token (constant time)."""
        return hmac.compare_digest(_digest(given), self._token_digest)

    def _mac(self, purpose: str, *parts: str) -> str:
        message = ".".join((purpose, *parts)).encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def issue(self) -> str:
        """A new sign-in cookie value."""
        issued = str(int(self._clock()))
        nonce = secrets.token_urlsafe(18)
        return ".".join((_VERSION, issued, nonce, self._mac("session", issued, nonce)))

    def session(self, cookie: str | None) -> Session | None:
        """The session ``cookie`` proves, or ``None`` (absent, forged, expired)."""
        if not cookie or len(cookie) > 256:
            return None
        parts = cookie.split(".")
        if len(parts) != 4 or parts[0] != _VERSION:
            return None
        _, issued, nonce, mac = parts
        if not hmac.compare_digest(mac.encode(), self._mac("session", issued, nonce).encode()):
            return None
        try:
            issued_at = int(issued)
        except ValueError:
            return None
        age = self._clock() - issued_at
        if age < -60 or age > self._ttl:  # a minute of clock skew between processes
            return None
        return Session(self.operator, issued_at, nonce)

    def csrf(self, session: Session) -> str:
        """The CSRF token of ``session``'s forms."""
        return self._mac("csrf", session.nonce)

    def check_csrf(self, session: Session, given: str | None) -> bool:
        """Whether ``given`` is ``session``'s CSRF token (constant time)."""
        if not given:
            return False
        return hmac.compare_digest(given.encode(), self.csrf(session).encode())


def same_origin(headers: Mapping[str, str]) -> bool:
    """False when the request's ``Origin`` (else ``Referer``) names another host than
    its ``Host`` header, or is ``null``; True when it matches or neither is sent."""
    host = (headers.get("host") or "").lower()
    for name in ("origin", "referer"):
        value = headers.get(name)
        if value is None:
            continue
        if value == "null":
            return False
        try:
            netloc = urlsplit(value).netloc.lower()
        except ValueError:
            return False
        return bool(host) and netloc == host
    return True
