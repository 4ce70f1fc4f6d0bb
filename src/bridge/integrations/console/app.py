"""``Console``: the operator console of one bridge — a FastAPI router and the sampler
behind its charts — and :func:`mount_console`, which adds it to an application.

    app = FastAPI(lifespan=bridge_lifespan(make_bridge))
    mount_console(app, Console(options_from_env(os.environ)))   # → /console

:func:`mount_console` includes the router (its routes stay out of the app's OpenAPI
schema) and wraps the app's lifespan: once the app's own lifespan has started (and,
with :func:`bridge.integrations.fastapi.bridge_lifespan`, put the running bridge in
``app.state.bridge``), :meth:`Console.start` binds the console to that bridge and
starts its sampler; on shutdown :meth:`Console.stop` stops the sampler before the
app's lifespan stops the bridge.  An app without a bridge (sync off) serves a page
that says so.  ``bridge console`` serves the same console on its own
(:mod:`bridge.cli._console`).

Routes, under ``path`` (``/console``): ``GET /`` the page (:mod:`.pages`),
``GET /letters/{seq}``, ``GET /static/console.css``; ``POST /login``, ``/logout``,
``/dlq/replay``, ``/dlq/purge`` (:mod:`.actions`).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response

from bridge.errors import ConfigError
from bridge.integrations.console import actions, pages
from bridge.integrations.console.audit import AuditTrail
from bridge.integrations.console.auth import Signer
from bridge.integrations.console.history import History, Sampler
from bridge.integrations.console.options import ConsoleOptions
from bridge.integrations.console.sources import SyncIssuesSource
from bridge.integrations.console.web import Web

if TYPE_CHECKING:
    from bridge.runtime import Bridge

_PATH = re.compile(r"(/[A-Za-z0-9._~-]+)+")


class Console:
    """The console of one bridge: ``router`` to include, ``start``/``stop`` to run it."""

    def __init__(
        self,
        options: ConsoleOptions | None = None,
        *,
        issues: SyncIssuesSource | None = None,
        path: str = "/console",
    ) -> None:
        """``issues``: the application's conflicts and stale events (:mod:`.sources`);
        ``path``: where the router serves the console (``/name``, no trailing slash)."""
        if not _PATH.fullmatch(path):
            raise ConfigError(f"console path must look like '/console', got {path!r}")
        options = options or ConsoleOptions()
        signer = None
        if options.token is not None:
            signer = Signer(options.token, operator=options.operator, ttl=options.session_ttl)
        self.options = options
        self.path = path
        self._web = Web(options=options, path=path, issues=issues, signer=signer,
                        history=History(options.samples))  # fmt: skip
        self.router = self._router()

    @property
    def bridge(self) -> Bridge | None:
        return self._web.bridge

    @property
    def history(self) -> History:
        return self._web.history

    async def start(self, bridge: Bridge | None) -> None:
        """Bind to ``bridge`` (started, or ``None``: no bridge in this process) and
        start sampling it."""
        await self.stop()
        web = self._web
        web.bridge = bridge
        if bridge is None:
            return
        web.audit = AuditTrail(bridge.engine, bridge.config.app_name)
        web.sampler = Sampler(bridge, web.history, self.options.sample_interval)
        await web.sampler.start()

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop the sampler (its task is awaited); the page then says no bridge runs."""
        web = self._web
        sampler, web.sampler = web.sampler, None
        if sampler is not None:
            await sampler.stop(timeout)
        web.bridge = None

    def _router(self) -> APIRouter:
        web = self._web
        router = APIRouter(prefix=self.path, include_in_schema=False)

        async def page(request: Request) -> Response:
            return await pages.overview(web, request)

        async def letter(request: Request, seq: str) -> Response:
            return await pages.letter(web, request, seq)

        async def stylesheet(request: Request) -> Response:
            return await pages.stylesheet(web, request)

        async def login(request: Request) -> Response:
            return await actions.sign_in(web, request)

        async def logout(request: Request) -> Response:
            return await actions.sign_out(web, request)

        async def replay(request: Request) -> Response:
            return await actions.letters_action(web, request, "replay")

        async def purge(request: Request) -> Response:
            return await actions.letters_action(web, request, "purge")

        router.add_api_route("", page, methods=["GET"], name="console")
        router.add_api_route("/", page, methods=["GET"], name="console_page")
        router.add_api_route("/letters/{seq}", letter, methods=["GET"], name="console_letter")
        router.add_api_route("/static/console.css", stylesheet, methods=["GET"])
        router.add_api_route("/login", login, methods=["POST"])
        router.add_api_route("/logout", logout, methods=["POST"])
        router.add_api_route("/dlq/replay", replay, methods=["POST"])
        router.add_api_route("/dlq/purge", purge, methods=["POST"])
        return router


def mount_console(app: FastAPI, console: Console) -> None:
    """Serve ``console`` in ``app`` and run it with ``app``'s bridge (module doc)."""
    app.include_router(console.router)
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(running: Any) -> AsyncIterator[Mapping[str, Any] | None]:
        async with inner(running) as state:
            await console.start(getattr(running.state, "bridge", None))
            try:
                yield state
            finally:
                await console.stop()

    wrapped: Any = lifespan  # Starlette types the lifespan of either state kind
    app.router.lifespan_context = wrapped
