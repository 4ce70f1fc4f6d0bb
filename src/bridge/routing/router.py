"""Route envelopes to handlers: per event or per batch.

A handler is ``async def handler(session, envelope) -> None``.  It runs inside
the inbox transaction (see :mod:`bridge.inbox.processor`): it may add, change and flush
rows but must not commit; the bridge commits once, then acks.  Publishing is
suppressed on that session, so applying the other side's change never echoes.
What its outcome becomes (ack, NAK with a delay, dead letter) is
:mod:`bridge.routing.outcomes`.

Writes a handler made before it raised are rolled back (with the whole batch
transaction on the optimistic path, with its savepoint on the fallback path).

A handler may run more than once for one delivery, its earlier runs rolled back:
the inbox applies a batch in one transaction without savepoints and, when any
handler in it raises or the commit fails, re-runs the batch (all but the handler
that raised) with a savepoint per delivery (:mod:`bridge.inbox._apply`);
redeliveries after a crash before the commit do the same.
So a handler must keep its effects inside ``session``.  Anything outside it
(another connection or transaction, an HTTP call, an e-mail, process memory) is
not rolled back and must be idempotent, e.g. ``INSERT ... ON CONFLICT DO NOTHING``.

**Batch handlers** (:meth:`Router.on_batch`): ``async def handler(session,
envelopes) -> None`` sees several deliveries of one resource type at once, so an
application can apply N events in a constant number of statements.  Contract,
all-or-raise: apply the envelopes in the order given (several events of one record
arrive in delivery order), keep every effect inside ``session`` (it may run again
after a rollback, like any handler), and raise if ANY envelope cannot be applied —
it need not say which.  The inbox then re-runs each of those deliveries alone as
``handler(session, [envelope])`` with its own savepoint, where its exception
(``Retry`` / ``Reject`` / anything else) decides that delivery exactly as a
per-event handler's would (:mod:`bridge.inbox._apply` has the run rule).  A resource
has either a per-event handler (:meth:`Router.on_resource`) or a batch handler,
never both; an exact event-type registration (:meth:`Router.on`) still wins for its
event type, which is then handled one event at a time.

**Middleware** (:meth:`Router.use`, :mod:`bridge.routing.middleware`) runs around every
handler call, per-event and batch alike; :meth:`Router.around` gives a view with more
middleware outside, which is how the bridge adds its tracing and metrics without
changing the router it was given.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable, Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from bridge.envelope import Envelope
from bridge.errors import ConfigError
from bridge.routing.middleware import Middleware, wrap, wrap_batch
from bridge.routing.outcomes import UNKNOWN_EVENT_POLICIES, UnknownEventPolicy

Handler = Callable[[AsyncSession, Envelope], Awaitable[None]]
#: Applies several envelopes of one resource type, all or raise (module doc).
BatchHandler = Callable[[AsyncSession, Sequence[Envelope]], Awaitable[None]]


class Router:
    """Maps ``event_type`` (exact) or ``resource_type`` (any action) to a handler.

    An exact event-type registration wins over a resource registration.
    Registering the same key twice raises :class:`~bridge.errors.ConfigError`
    (two handlers for one event would make the outcome ambiguous), and so does a
    per-event and a batch handler for one resource type.
    """

    def __init__(self, *, unknown_event_policy: UnknownEventPolicy = "dead_letter") -> None:
        if unknown_event_policy not in UNKNOWN_EVENT_POLICIES:
            raise ConfigError(
                f"unknown_event_policy must be one of {', '.join(UNKNOWN_EVENT_POLICIES)}, "
                f"got {unknown_event_policy!r}"
            )
        self.unknown_event_policy: UnknownEventPolicy = unknown_event_policy
        self._by_event: dict[str, Handler] = {}
        self._by_resource: dict[str, Handler] = {}
        self._batch_by_resource: dict[str, BatchHandler] = {}
        self._batch_single: dict[str, Handler] = {}  # the batch handler, one envelope a call
        self._middleware: list[Middleware] = []  # use(); shared with around() views
        self._outer: tuple[Middleware, ...] = ()  # around()
        # handlers inside the middleware, by handler id: (middleware count, wrapper)
        self._wrapped: dict[int, tuple[int, Handler]] = {}
        self._wrapped_batch: dict[int, tuple[int, BatchHandler]] = {}

    def use(self, middleware: Middleware) -> None:
        """Run every handler call inside ``middleware`` (:mod:`bridge.routing.middleware`);
        the first registered is the outermost."""
        self._middleware.append(middleware)

    def around(self, *middleware: Middleware) -> Router:
        """A view of this router whose handler calls run inside ``middleware`` first,
        outside those of :meth:`use`.  Registrations and :meth:`use` on either are
        seen by both; the router itself is left as it was (the bridge adds its
        tracing and metrics this way)."""
        view = copy.copy(self)
        view._outer = (*self._outer, *middleware)
        view._wrapped, view._wrapped_batch = {}, {}
        return view

    def on(self, event_type: str, handler: Handler) -> None:
        """Handle exactly ``event_type`` (e.g. ``"organization.created"``)."""
        if not event_type or "." not in event_type:
            raise ConfigError(f"event_type must look like 'resource.action', got {event_type!r}")
        if event_type in self._by_event:
            raise ConfigError(f"a handler for event type {event_type!r} is already registered")
        self._by_event[event_type] = handler

    def on_resource(self, resource_type: str, handler: Handler) -> None:
        """Handle every action (created/updated/deleted, ...) of ``resource_type``."""
        self._check_free(resource_type)
        self._by_resource[resource_type] = handler

    def on_batch(self, resource_type: str, handler: BatchHandler) -> None:
        """Handle every action of ``resource_type`` several envelopes at a time (module doc)."""
        self._check_free(resource_type)
        self._batch_by_resource[resource_type] = handler

        async def single(session: AsyncSession, envelope: Envelope) -> None:
            await handler(session, (envelope,))

        self._batch_single[resource_type] = single

    def _check_free(self, resource_type: str) -> None:
        if not resource_type:
            raise ConfigError("resource_type must not be empty")
        if resource_type in self._by_resource or resource_type in self._batch_by_resource:
            raise ConfigError(f"a handler for resource {resource_type!r} is already registered")

    def handler_for(self, envelope: Envelope) -> Handler | None:
        """The handler for ``envelope``, or ``None`` (then the unknown-event policy applies).

        For a batch-handled resource: the batch handler called with ``[envelope]``.
        """
        handler = self._by_event.get(envelope.event_type)
        if handler is None:
            handler = self._by_resource.get(envelope.resource_type)
        if handler is None:
            handler = self._batch_single.get(envelope.resource_type)
        if handler is None:
            return None
        layers = self._layers()
        cached = self._wrapped.get(id(handler))
        if cached is None or cached[0] != len(layers):
            cached = self._wrapped[id(handler)] = (len(layers), wrap(handler, layers))
        return cached[1]

    def batch_handler_for(self, envelope: Envelope) -> BatchHandler | None:
        """The batch handler of ``envelope``'s resource type, unless its event type has its own."""
        if envelope.event_type in self._by_event:
            return None
        handler = self._batch_by_resource.get(envelope.resource_type)
        if handler is None:
            return None
        layers = self._layers()
        cached = self._wrapped_batch.get(id(handler))
        if cached is None or cached[0] != len(layers):
            cached = self._wrapped_batch[id(handler)] = (len(layers), wrap_batch(handler, layers))
        return cached[1]

    def _layers(self) -> tuple[Middleware, ...]:
        # use() only appends, so the count tells whether a cached wrapper is current
        return (*self._outer, *self._middleware)

    @property
    def event_types(self) -> frozenset[str]:
        """Event types registered with :meth:`on`."""
        return frozenset(self._by_event)

    @property
    def resource_types(self) -> frozenset[str]:
        """Resource types registered with :meth:`on_resource` or :meth:`on_batch`."""
        return frozenset(self._by_resource) | frozenset(self._batch_by_resource)

    @property
    def batch_resource_types(self) -> frozenset[str]:
        """Resource types registered with :meth:`on_batch`."""
        return frozenset(self._batch_by_resource)
