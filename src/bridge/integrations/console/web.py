"""What every console request shares: the console's state, rendering with the
security headers, the sign-in cookie, the client's address and bounded form reading.

Rendering uses Jinja2 with autoescaping on for every template
(:func:`jinja2.select_autoescape` of ``html``): every value — above all anything read
from a dead letter — is escaped; only the charts' SVG (:mod:`.charts`, escaped
piece by piece) is marked safe.  Every response carries :data:`SECURITY_HEADERS`:
a Content-Security-Policy that allows no script at all and styles only from the
console's own stylesheet, no framing, no caching, no MIME sniffing.

Forms (:meth:`Web.read_form`): only ``application/x-www-form-urlencoded``, at most
:data:`MAX_FORM_BYTES` (read in chunks: a larger body is refused with 413 before it
is read whole), at most :data:`MAX_FORM_FIELDS` fields, UTF-8.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from bridge.integrations.console.audit import REFUSED, AuditTrail
from bridge.integrations.console.auth import SESSION_COOKIE, Session, Signer
from bridge.integrations.console.history import History, Sampler
from bridge.integrations.console.options import ConsoleOptions
from bridge.integrations.console.redact import UNSET
from bridge.integrations.console.sources import SyncIssuesSource

if TYPE_CHECKING:
    from bridge.runtime import Bridge

MAX_FORM_BYTES = 64 * 1024
MAX_FORM_FIELDS = 1100
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
}


class FormError(Exception):
    """A form the console will not read: ``status`` and a message for the page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def age_text(seconds: float | None) -> str:
    """``seconds`` as ``"3d 4h"``, ``"5m 12s"``, ``"40s"`` (:data:`~.redact.UNSET` when unknown)."""
    if seconds is None:
        return UNSET
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def when_text(value: datetime | None) -> str:
    return UNSET if value is None else value.strftime("%Y-%m-%d %H:%M:%S %Z").strip()


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("bridge.integrations.console", "templates"),
        autoescape=select_autoescape(["html"], default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["age"] = age_text
    env.filters["when"] = when_text
    env.globals["urlencode"] = urlencode
    return env


@dataclass(slots=True)
class Web:
    """The console's state and its request helpers (one per :class:`~.app.Console`)."""

    options: ConsoleOptions
    path: str
    issues: SyncIssuesSource | None
    signer: Signer | None
    history: History
    env: Environment = field(default_factory=_environment)
    bridge: Bridge | None = None
    audit: AuditTrail | None = None
    sampler: Sampler | None = None
    failed_sign_ins: list[float] = field(default_factory=list)

    # -- requests ---------------------------------------------------------------------
    def base(self, request: Request) -> str:
        """The console's URL path as the browser sees it (the app's root path first)."""
        return f"{request.scope.get('root_path', '')}{self.path}"

    def session(self, request: Request) -> Session | None:
        if self.signer is None:
            return None
        return self.signer.session(request.cookies.get(SESSION_COOKIE))

    @staticmethod
    def client(request: Request) -> str:
        return request.client.host if request.client is not None else "unknown"

    @staticmethod
    async def read_form(request: Request) -> dict[str, list[str]]:
        """The urlencoded form of ``request`` (module doc); FormError when refused."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/x-www-form-urlencoded":
            raise FormError(415, "the console takes only HTML form posts")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_FORM_BYTES:
            raise FormError(413, f"the form is larger than {MAX_FORM_BYTES} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                raise FormError(413, f"the form is larger than {MAX_FORM_BYTES} bytes")
        try:
            text = body.decode("utf-8")
            return parse_qs(text, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
        except UnicodeDecodeError as exc:
            raise FormError(400, "the form is not UTF-8") from exc
        except ValueError as exc:
            raise FormError(400, f"the form has more than {MAX_FORM_FIELDS} fields") from exc

    def sign_in_throttled(self, *, limit: int = 10, window: float = 60.0) -> bool:
        """Whether ``limit`` sign-ins failed in the last ``window`` seconds (this process)."""
        now = time.monotonic()
        self.failed_sign_ins[:] = [t for t in self.failed_sign_ins if now - t < window]
        return len(self.failed_sign_ins) >= limit

    # -- responses --------------------------------------------------------------------
    def context(self, request: Request, session: Session | None) -> dict[str, Any]:
        bridge = self.bridge
        return {
            "base": self.base(request),
            "app": bridge.config.app_name if bridge is not None else "",
            "peer": bridge.config.destination_app if bridge is not None else "",
            "session": session,
            "csrf": self.signer.csrf(session) if self.signer and session else "",
            "token_configured": self.signer is not None,
            "options": self.options,
        }

    def render(
        self, request: Request, template: str, *, status: int = 200,
        session: Session | None = None, **values: Any,
    ) -> HTMLResponse:  # fmt: skip
        html = self.env.get_template(template).render(**self.context(request, session), **values)
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    def message(
        self, request: Request, status: int, title: str, text: str,
        session: Session | None = None,
    ) -> HTMLResponse:  # fmt: skip
        return self.render(request, "message.html", status=status, session=session,
                           title=title, text=text)  # fmt: skip

    async def refuse(
        self, request: Request, status: int, *, action: str, text: str,
        actor: str = "anonymous", target: str = "",
    ) -> HTMLResponse:  # fmt: skip
        """Audit a refused action and answer it with ``status`` and ``text``."""
        if self.audit is not None:
            await self.audit.record(actor=actor, client=self.client(request), action=action,
                                    target=target, outcome=REFUSED, detail=text)  # fmt: skip
        return self.message(request, status, "Refused", text, session=self.session(request))

    @staticmethod
    def plain(content: bytes | str, media_type: str) -> Response:
        return Response(content, media_type=media_type, headers=SECURITY_HEADERS)


def flat(form: Mapping[str, list[str]]) -> dict[str, str]:
    """The first value of each field (the filters)."""
    return {key: values[0] for key, values in form.items() if values}
