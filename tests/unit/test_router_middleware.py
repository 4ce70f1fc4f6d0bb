"""Handler middleware (Router.use, Router.around): order, what a call carries, and the
rules that keep a delivery's outcome the handler's (pure, no I/O)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from bridge.envelope import Envelope
from bridge.errors import Reject
from bridge.routing.middleware import HandlerCall, Next
from bridge.routing.router import Router


def envelope(event_type: str = "organization.updated", rid: str = "1") -> Envelope:
    return Envelope(
        event_type=event_type,
        producer="b",
        resource_type=event_type.split(".", maxsplit=1)[0],
        resource_id=rid,
        payload={},
    )


class Recorder:
    """A middleware that writes down where it ran and what it saw."""

    def __init__(self, name: str, log: list[str], calls: list[HandlerCall] | None = None) -> None:
        self.name, self.log, self.calls = name, log, calls

    async def __call__(self, call: HandlerCall, call_next: Next) -> None:
        self.log.append(f"{self.name}>")
        if self.calls is not None:
            self.calls.append(call)
        try:
            await call_next()
        finally:
            self.log.append(f"<{self.name}")


async def test_middleware_order_outer_first_and_the_router_itself_unwrapped() -> None:
    log: list[str] = []

    async def handler(session: AsyncSession, env: Envelope) -> None:
        log.append("handler")

    router = Router()
    router.on_resource("organization", handler)
    router.use(Recorder("a", log))
    router.use(Recorder("b", log))
    view = router.around(Recorder("outer", log))

    wrapped = view.handler_for(envelope())
    assert wrapped is not None
    await wrapped(AsyncSession(), envelope())
    assert log == ["outer>", "a>", "b>", "handler", "<b", "<a", "<outer"]

    log.clear()
    plain = router.handler_for(envelope())
    assert plain is not None
    await plain(AsyncSession(), envelope())
    assert log == ["a>", "b>", "handler", "<b", "<a"]  # around() left the router as it was


async def test_a_call_carries_its_envelopes_and_says_whether_it_is_a_batch() -> None:
    log: list[str] = []
    calls: list[HandlerCall] = []
    runs: list[list[str]] = []

    async def batch(session: AsyncSession, envelopes: Sequence[Envelope]) -> None:
        runs.append([e.resource_id for e in envelopes])

    async def single(session: AsyncSession, env: Envelope) -> None:
        runs.append([env.resource_id])

    router = Router()
    router.on_batch("organization", batch)
    router.on_resource("user", single)
    router.use(Recorder("m", log, calls))
    session = AsyncSession()

    batch_handler = router.batch_handler_for(envelope())
    assert batch_handler is not None
    await batch_handler(session, [envelope(rid="1"), envelope(rid="2")])
    one = router.handler_for(envelope(rid="3"))  # the savepoint path: the run of one
    assert one is not None
    await one(session, envelope(rid="3"))
    user = router.handler_for(envelope("user.created", rid="4"))
    assert user is not None
    await user(session, envelope("user.created", rid="4"))

    assert runs == [["1", "2"], ["3"], ["4"]]
    assert [([e.resource_id for e in c.envelopes], c.batch) for c in calls] == [
        (["1", "2"], True),
        (["3"], False),
        (["4"], False),
    ]
    assert all(c.session is session for c in calls)


async def test_middleware_added_later_wraps_handlers_fetched_before() -> None:
    log: list[str] = []

    async def handler(session: AsyncSession, env: Envelope) -> None:
        log.append("handler")

    router = Router()
    router.on_resource("organization", handler)
    view = router.around(Recorder("outer", log))
    assert view.handler_for(envelope()) is view.handler_for(envelope())  # built once
    router.use(Recorder("late", log))  # use() on the router reaches its views
    wrapped = view.handler_for(envelope())
    assert wrapped is not None
    await wrapped(AsyncSession(), envelope())
    assert log == ["outer>", "late>", "handler", "<late", "<outer"]


async def test_the_handlers_exception_passes_through_unchanged() -> None:
    log: list[str] = []
    rejection = Reject("not here", reason="conflict")

    async def handler(session: AsyncSession, env: Envelope) -> None:
        raise rejection

    router = Router()
    router.on_resource("organization", handler)
    router.use(Recorder("m", log))
    wrapped = router.handler_for(envelope())
    assert wrapped is not None
    with pytest.raises(Reject) as raised:
        await wrapped(AsyncSession(), envelope())
    assert raised.value is rejection and log == ["m>", "<m"]


@pytest.mark.parametrize("times", [0, 2])
async def test_call_next_must_be_awaited_exactly_once(times: int) -> None:
    ran: list[str] = []

    async def handler(session: AsyncSession, env: Envelope) -> None:
        ran.append(env.resource_id)

    async def bad(call: HandlerCall, call_next: Next) -> None:
        for _ in range(times):
            await call_next()

    router = Router()
    router.on_resource("organization", handler)
    router.use(bad)
    wrapped = router.handler_for(envelope())
    assert wrapped is not None
    # never acked without the handler, never applied twice: the call fails (retried)
    with pytest.raises(RuntimeError, match="call_next"):
        await wrapped(AsyncSession(), envelope())
    assert ran == ["1"] * min(times, 1)
