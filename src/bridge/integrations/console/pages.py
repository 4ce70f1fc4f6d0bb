"""The console's pages (GET, never a change): the overview, one dead letter, the stylesheet.

The overview (``{path}/``) shows, top to bottom: health; the outbox backlog and
its oldest row; the consumer's lag, redeliveries and inbox; throughput, end-to-end
lag and backlog over the last hour (:mod:`.history`, drawn by :mod:`.charts`); the
dead letters, filtered (:mod:`.letters`) with their actions for a signed-in
operator; reconciliation runs and their repairs; the application's conflicts and
stale events (:mod:`.sources`); the configuration in force (:mod:`.redact`); the
audit trail (:mod:`.audit`).  A dead letter's page (``{path}/letters/{seq}``) shows
its headers and whole body.  With ``anonymous_read=False`` both ask for the token
first (401).
"""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime
from importlib.resources import files
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from bridge.errors import DeadLetterNotFoundError
from bridge.integrations.console.charts import Series, line_chart
from bridge.integrations.console.letters import LetterFilter, body_text, letter_page, view
from bridge.integrations.console.reads import READ_TIMEOUT, guarded, read_overview
from bridge.integrations.console.redact import config_rows
from bridge.integrations.console.web import Web

_SEQ = re.compile(r"[0-9]{1,19}")
_CSS = files("bridge.integrations.console").joinpath("static/console.css")


def dead_letters_unavailable(web: Web) -> str | None:
    """Why this process cannot read or act on dead letters, or ``None`` when it can."""
    bridge = web.bridge
    if bridge is None:
        return "no bridge runs in this process (sync is off): dead letters are not available"
    if bridge.dead_letters is None:
        return "dead letters are off in this process (use_dlq=False, or the bridge is stopped)"
    # The server reports a denied request asynchronously (a "Permissions Violation");
    # a slow answer is no denial, so this looks at what the server said, not at timeouts.
    if bridge.connection.denied_api_subject() is not None:
        return (
            f"this process's NATS user may not read the stream (restrictive mode): run "
            f"`bridge --env-file .devstack/{bridge.config.app_name}.admin.env console` with "
            "the admin credentials to read, replay and purge dead letters"
        )
    return None


def span_label(seconds: float) -> str:
    """``hour``, ``minute``, ``5 minutes``, ``90 seconds``: what the charts span."""
    for unit, size in (("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds >= size and seconds % size == 0:
            count = seconds / size
            return unit if count == 1 else f"{count:g} {unit}s"
    return f"{seconds:g} seconds"


def charts(web: Web) -> list[Any]:
    """The three charts of the last ``history`` seconds."""
    now, span, history = time.time(), web.options.history, web.history
    consumer_here = web.bridge is not None and web.bridge.consumer is not None
    return [
        line_chart("Throughput (events per second, every process of the app)", [
            Series("published", "#1f6feb", history.series("published_per_second")),
            Series("delivered", "#2da44e", history.series("delivered_per_second")),
        ], unit="/s", span=span, now=now),
        line_chart("End-to-end lag (occurred_at to ack, this process's consumer)", [
            Series("p50", "#2da44e", history.series("lag_p50")),
            Series("p95", "#bf8700", history.series("lag_p95")),
            Series("p99", "#cf222e", history.series("lag_p99")),
        ], unit="s", span=span, now=now, empty_note=(
            "no acks sampled yet" if consumer_here else "no consumer runs in this process"
        )),
        line_chart("Backlog", [
            Series("outbox pending", "#1f6feb", history.series("outbox_pending")),
            Series("consumer pending", "#8250df", history.series("consumer_pending")),
            Series("dead letters", "#cf222e", history.series("dead_letters")),
        ], unit="", span=span, now=now),
    ]  # fmt: skip


async def overview(web: Web, request: Request) -> Response:
    session = web.session(request)
    if session is None and not web.options.anonymous_read:
        return web.render(request, "signin.html", status=401, session=None)
    if web.bridge is None:
        return web.message(request, 503, "No bridge", dead_letters_unavailable(web) or "",
                           session=session)  # fmt: skip
    bridge, options = web.bridge, web.options
    chosen = LetterFilter.from_query(request.query_params)
    unavailable = dead_letters_unavailable(web)

    async def letters() -> Any:
        assert bridge.dead_letters is not None
        return await letter_page(
            bridge.dead_letters, chosen, now=datetime.now(UTC), page_size=options.page_size,
            scan_limit=options.scan_limit, preview_bytes=options.body_preview_bytes,
        )  # fmt: skip

    async def no_letters() -> Any:
        return None

    assert web.audit is not None
    overview_part, letters_part, audit = await asyncio.gather(
        read_overview(bridge, web.issues),
        guarded(letters() if unavailable is None else no_letters()),
        web.audit.recent(options.audit_rows),
    )
    rows = config_rows(
        ("", bridge.config),
        ("console.", options),
        extra={"database_url": str(bridge.engine.url)},
    )
    return web.render(
        request, "console.html", session=session, overview=overview_part,
        letters=letters_part, letters_unavailable=unavailable, chosen=chosen,
        charts=charts(web), span_label=span_label(options.history),
        samples=len(web.history), config=rows,
        audit=audit[0], audit_note=audit[1],
    )  # fmt: skip


async def letter(web: Web, request: Request, seq: str) -> Response:
    session = web.session(request)
    if session is None and not web.options.anonymous_read:
        return web.render(request, "signin.html", status=401, session=None)
    if not _SEQ.fullmatch(seq) or int(seq) < 1:
        return web.message(request, 400, "Not a sequence",
                           "a dead letter is named by its stream sequence", session)  # fmt: skip
    unavailable = dead_letters_unavailable(web)
    if unavailable is not None:
        return web.message(request, 503, "Dead letters unavailable", unavailable, session)
    assert web.bridge is not None and web.bridge.dead_letters is not None
    try:
        async with asyncio.timeout(READ_TIMEOUT):
            stored = await web.bridge.dead_letters.show(int(seq))
    except DeadLetterNotFoundError as exc:
        return web.message(request, 404, "No such dead letter", str(exc), session)
    except Exception as exc:  # NATS unavailable or slow: say so, never a 500
        return web.message(request, 502, "Dead letter unreadable",
                           f"{type(exc).__name__}: {exc}"[:500], session)  # fmt: skip
    return web.render(
        request, "letter.html", session=session,
        letter=view(stored, now=datetime.now(UTC), preview_bytes=0),
        body=body_text(stored.data),
    )  # fmt: skip


async def stylesheet(web: Web, request: Request) -> Response:
    return web.plain(_CSS.read_bytes(), "text/css; charset=utf-8")
