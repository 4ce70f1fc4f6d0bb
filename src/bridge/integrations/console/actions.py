"""The console's actions, all HTML form POSTs: sign in, sign out, replay and purge
dead letters.  Nothing changes on a GET.

**The gate** every action but sign-in passes, in this order — each refusal is
answered with its reason and audited (:mod:`.audit`):

1. the browser's ``Origin``/``Referer``, if sent, names this host (:func:`.auth.same_origin`);
2. an operator token is configured (else the console is read-only);
3. the sign-in cookie is valid (:meth:`.auth.Signer.session`);
4. the form is a bounded urlencoded form (:meth:`.web.Web.read_form`) whose ``csrf``
   field is the session's CSRF token.

Sign-in checks 1 and 2, then the token (constant time); after 10 failed sign-ins in
a minute this process refuses further ones for the rest of that minute (429).

**Replay and purge take two steps.**  The first POST names the letters — ``one``
(a row's button), ``seq`` (ticked rows) or ``scope=all`` with the page's filters,
resolved to at most ``max_batch`` sequences — and answers a confirmation page that
lists them; nothing changes.  Only its "Confirm" (``confirm=yes`` with the listed
sequences) acts, on exactly those sequences: letters that arrived meanwhile are not
touched.  Replay is :func:`bridge.routing.replay.replay_many` (confined to this app's
consume subject, idempotent, a replayed letter leaves the DLQ; a letter it cannot
replay is named with its reason); purge is
:meth:`~bridge.routing.dlq.DeadLetters.purge` per sequence, which refuses a sequence
that is not a dead letter of this app.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from fastapi.responses import RedirectResponse, Response

from bridge.errors import DeadLetterNotFoundError
from bridge.integrations.console.audit import FAILED, OK, PARTIAL
from bridge.integrations.console.auth import SESSION_COOKIE, Session, same_origin
from bridge.integrations.console.letters import (
    LetterFilter,
    LetterView,
    matching_seqs,
    parse_seqs,
    view,
)
from bridge.integrations.console.pages import dead_letters_unavailable
from bridge.integrations.console.web import SECURITY_HEADERS, FormError, Web, flat
from bridge.routing.dlq import DeadLetters
from bridge.routing.replay import replay_many

#: Letters a confirmation page describes one by one (the rest by sequence only).
CONFIRM_DETAILS = 50
#: Seconds one letter's purge may take (look-up and delete).
PURGE_TIMEOUT = 10.0
CROSS_SITE = "cross-site request refused: act from the console's own page"
READ_ONLY = (
    "this console is read-only: no operator token is configured "
    "(BRIDGE_CONSOLE_TOKEN, or ConsoleOptions.token)"
)
SIGN_IN_FIRST = "sign in with the operator token first (no sign-in, or it expired)"
BAD_CSRF = "the form's CSRF token is missing or wrong: reload the console and try again"


def describe(seqs: list[int]) -> str:
    """``dead letters 4, 9, 12`` (the first 20, then how many in all)."""
    shown = ", ".join(str(s) for s in seqs[:20])
    more = f", … ({len(seqs)} in all)" if len(seqs) > 20 else ""
    return f"dead letters {shown}{more}"


def _secure(web: Web, request: Request) -> bool:
    if web.options.secure_cookies is not None:
        return web.options.secure_cookies
    return request.url.scheme == "https"


async def sign_in(web: Web, request: Request) -> Response:
    if not same_origin(request.headers):
        return await web.refuse(request, 403, action="sign_in", text=CROSS_SITE)
    if web.signer is None:
        return await web.refuse(request, 403, action="sign_in", text=READ_ONLY)
    if web.sign_in_throttled():
        return await web.refuse(request, 429, action="sign_in",
                                text="too many failed sign-ins: wait a minute")  # fmt: skip
    try:
        form = await web.read_form(request)
    except FormError as exc:
        return await web.refuse(request, exc.status, action="sign_in", text=exc.message)
    if not web.signer.check_token(flat(form).get("token", "")):
        web.failed_sign_ins.append(time.monotonic())
        return await web.refuse(request, 403, action="sign_in", text="wrong operator token")
    if web.audit is not None:
        await web.audit.record(actor=web.signer.operator, client=web.client(request),
                               action="sign_in", target="", outcome=OK)  # fmt: skip
    base = web.base(request)
    response = RedirectResponse(f"{base}/", status_code=303, headers=SECURITY_HEADERS)
    response.set_cookie(
        SESSION_COOKIE, web.signer.issue(), max_age=int(web.options.session_ttl),
        path=base, httponly=True, samesite="strict", secure=_secure(web, request),
    )  # fmt: skip
    return response


async def gate(
    web: Web, request: Request, action: str
) -> tuple[Session, dict[str, list[str]]] | Response:
    """The checks of every action (module doc): the session and its form, or a refusal."""
    if not same_origin(request.headers):
        return await web.refuse(request, 403, action=action, text=CROSS_SITE)
    if web.signer is None:
        return await web.refuse(request, 403, action=action, text=READ_ONLY)
    session = web.session(request)
    if session is None:
        return await web.refuse(request, 403, action=action, text=SIGN_IN_FIRST)
    try:
        form = await web.read_form(request)
    except FormError as exc:
        return await web.refuse(request, exc.status, action=action, text=exc.message,
                                actor=session.operator)  # fmt: skip
    if not web.signer.check_csrf(session, flat(form).get("csrf")):
        return await web.refuse(request, 403, action=action, text=BAD_CSRF,
                                actor=session.operator)  # fmt: skip
    return session, form


async def sign_out(web: Web, request: Request) -> Response:
    checked = await gate(web, request, "sign_out")
    if isinstance(checked, Response):
        return checked
    session, _ = checked
    if web.audit is not None:
        await web.audit.record(actor=session.operator, client=web.client(request),
                               action="sign_out", target="", outcome=OK)  # fmt: skip
    base = web.base(request)
    response = RedirectResponse(f"{base}/", status_code=303, headers=SECURITY_HEADERS)
    response.delete_cookie(SESSION_COOKIE, path=base, httponly=True, samesite="strict")
    return response


async def _targets(
    web: Web, dlq: DeadLetters, form: dict[str, list[str]]
) -> tuple[list[int], bool]:
    """The sequences a form names (module doc) and whether more letters matched."""
    fields = flat(form)
    limit = web.options.max_batch
    if "one" in form:
        return parse_seqs(form["one"][:1], limit=limit), False
    if fields.get("scope") == "all":
        chosen = LetterFilter.from_query(fields)
        if chosen.problems:
            raise ValueError("; ".join(chosen.problems))
        return await matching_seqs(dlq, chosen, now=datetime.now(UTC), limit=limit,
                                   scan_limit=web.options.scan_limit)  # fmt: skip
    return parse_seqs(form.get("seq", []), limit=limit), False


async def _details(dlq: DeadLetters, seqs: list[int]) -> list[LetterView | int]:
    now = datetime.now(UTC)
    shown: list[LetterView | int] = []
    for seq in seqs:
        if len(shown) >= CONFIRM_DETAILS:
            shown.append(seq)
            continue
        try:
            shown.append(view(await dlq.show(seq), now=now, preview_bytes=0))
        except DeadLetterNotFoundError:
            shown.append(seq)
    return shown


async def letters_action(web: Web, request: Request, action: str) -> Response:
    """``replay`` or ``purge``: confirm first, then act (module doc)."""
    checked = await gate(web, request, action)
    if isinstance(checked, Response):
        return checked
    session, form = checked
    refuse: dict[str, Any] = {"action": action, "actor": session.operator}
    unavailable = dead_letters_unavailable(web)
    if unavailable is not None:
        return await web.refuse(request, 503, text=unavailable, **refuse)
    assert web.bridge is not None and web.bridge.dead_letters is not None
    dlq = web.bridge.dead_letters
    try:
        seqs, more = await _targets(web, dlq, form)
    except ValueError as exc:
        return await web.refuse(request, 400, text=str(exc), **refuse)
    except Exception as exc:  # NATS unavailable while resolving "all matching"
        return await web.refuse(request, 502, text=f"{type(exc).__name__}: {exc}", **refuse)
    if not seqs:
        return await web.refuse(request, 400, text="no dead letter chosen", **refuse)
    if flat(form).get("confirm") != "yes":
        return web.render(request, "confirm.html", session=session, action=action,
                          seqs=seqs, more=more, details=await _details(dlq, seqs))  # fmt: skip
    target = describe(seqs)
    try:
        if action == "replay":
            report = await replay_many(dlq, seqs)
            outcome = OK if report.ok else PARTIAL if report.replayed else FAILED
            detail = report.summary_line() + "".join(
                f"; {n.dlq_seq}: {n.reason}" for n in report.not_replayed
            )
            result: dict[str, Any] = {"report": report}
        else:
            purged, missing, stopped = await _purge(dlq, seqs)
            outcome = OK if len(purged) == len(seqs) else PARTIAL if purged else FAILED
            detail = f"purged {len(purged)} of {len(seqs)} dead letters"
            if missing:
                detail += f"; not dead letters of this app: {', '.join(map(str, missing))}"
            if stopped:
                detail += f"; stopped early: {stopped}"
            result = {"purged": purged, "missing": missing, "stopped": stopped}
    except Exception as exc:  # NATS unavailable mid-way: what was done stays done
        text = f"{type(exc).__name__}: {exc}"[:500]
        await _audit(web, request, session, action, target=target, outcome=FAILED, detail=text)
        return web.message(request, 502, f"{action.title()} failed", text, session)
    await _audit(web, request, session, action, target=target, outcome=outcome, detail=detail)
    return web.render(request, "result.html", session=session, action=action, seqs=seqs,
                      outcome=outcome, detail=detail, **result)  # fmt: skip


async def _audit(
    web: Web, request: Request, session: Session, action: str, *, target: str, outcome: str,
    detail: str,
) -> None:  # fmt: skip
    assert web.audit is not None  # bound with the bridge (dead_letters_unavailable)
    await web.audit.record(actor=session.operator, client=web.client(request), action=action,
                           target=target, outcome=outcome, detail=detail)  # fmt: skip


async def _purge(dlq: DeadLetters, seqs: list[int]) -> tuple[list[int], list[int], str | None]:
    """Purge each sequence; stop at the first error that is not "no such letter"."""
    purged: list[int] = []
    missing: list[int] = []
    for seq in seqs:
        try:
            async with asyncio.timeout(PURGE_TIMEOUT):
                await dlq.purge(seq)
            purged.append(seq)
        except DeadLetterNotFoundError:
            missing.append(seq)
        except Exception as exc:  # NATS unavailable: the rest would fail too
            return purged, missing, f"{type(exc).__name__}: {exc}"[:500]
    return purged, missing, None
