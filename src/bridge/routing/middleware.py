"""Handler middleware: code that runs around every handler call.

A middleware is ``async def middleware(call, call_next) -> None``:

- ``call`` is a :class:`HandlerCall`: the session (the inbox transaction), the
  envelopes of the call — one for a per-event handler, the run for a batch handler
  (:meth:`bridge.routing.router.Router.on_batch`; ``call.batch`` is then ``True``) —
  and nothing else.
- ``await call_next()`` runs the rest of the chain and the handler.  A middleware
  must await it exactly once and let what it raises propagate unchanged: the
  handler's outcome decides the delivery (:mod:`bridge.routing.outcomes`).  Not
  calling it, or calling it twice, raises :class:`RuntimeError` — the delivery is
  retried, never acked without its handler having run, never applied twice.
- Everything runs inside the handler's transaction and may run again after a
  rollback (the inbox's fallback path re-runs handlers, :mod:`bridge.routing.router`),
  so a middleware keeps its effects idempotent or outside anything that matters:
  timing, spans, logs.

:meth:`~bridge.routing.router.Router.use` registers one (the first registered is the
outermost); the bridge puts its own — :class:`bridge.observability.metrics.MetricsMiddleware`
and :class:`bridge.observability.tracing.TracingMiddleware` — around those
(:meth:`~bridge.routing.router.Router.around`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession

from bridge.envelope import Envelope

if TYPE_CHECKING:  # the router imports this module
    from bridge.routing.router import BatchHandler, Handler


@dataclass(frozen=True, slots=True)
class HandlerCall:
    """One handler call, as a middleware sees it."""

    session: AsyncSession
    envelopes: Sequence[Envelope]
    #: A batch handler's call with its run (several envelopes, or one on the run's own).
    batch: bool = False


#: Runs the rest of the chain and the handler.
Next = Callable[[], Awaitable[None]]
Middleware = Callable[[HandlerCall, Next], Awaitable[None]]


async def run_chain(middleware: Sequence[Middleware], call: HandlerCall, handler: Next) -> None:
    """Run ``handler`` inside ``middleware`` (the first is the outermost; module doc)."""

    async def step(index: int) -> None:
        if index == len(middleware):
            await handler()
            return
        layer = middleware[index]
        called = False

        async def call_next() -> None:
            nonlocal called
            if called:
                raise RuntimeError(f"middleware {layer!r} called call_next() twice")
            called = True
            await step(index + 1)

        await layer(call, call_next)
        if not called:
            raise RuntimeError(f"middleware {layer!r} returned without calling call_next()")

    await step(0)


def wrap(handler: Handler, middleware: Sequence[Middleware]) -> Handler:
    """``handler`` with ``middleware`` around each call (``handler`` itself without any)."""
    if not middleware:
        return handler

    async def wrapped(session: AsyncSession, envelope: Envelope) -> None:
        await run_chain(
            middleware, HandlerCall(session, (envelope,)), lambda: handler(session, envelope)
        )

    return wrapped


def wrap_batch(handler: BatchHandler, middleware: Sequence[Middleware]) -> BatchHandler:
    """A batch handler with ``middleware`` around each call (``call.batch`` is ``True``)."""
    if not middleware:
        return handler

    async def wrapped(session: AsyncSession, envelopes: Sequence[Envelope]) -> None:
        await run_chain(
            middleware,
            HandlerCall(session, envelopes, batch=True),
            lambda: handler(session, envelopes),
        )

    return wrapped
