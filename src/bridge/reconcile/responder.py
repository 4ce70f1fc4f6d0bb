"""Answers the peer's reconciliation requests about this app's synced rows.

A core NATS queue subscription on :attr:`~bridge.subjects.Subjects.reconcile`
(group :attr:`~bridge.subjects.Subjects.reconcile_group`, so several instances of
an app share the requests) runs the :mod:`bridge.reconcile._digest` queries and
replies (:mod:`bridge.reconcile._protocol`):

- ``digests`` / ``rows`` / ``split``: read-only, one short database transaction per request.
- ``reemit``: the rows are re-stated through this app's outbox
  (:func:`bridge.reconcile.restate.write_snapshots`) in one transaction; the reply
  (the number of outbox rows) is sent only after the commit, so a requester that
  sees the count knows the events will be published.  A request that times out on
  the requester's side may still commit: re-emitting a row twice is harmless (the
  receiver sees the same version).

Requests are untrusted input — anyone who may publish on the subject sends them:

- **Checked before any work** (:func:`~bridge.reconcile._protocol.decode_request`:
  size, nesting, fields, counts; then the keys against the resource's key — arity,
  kinds, the column type's range — and the ranges against each other: none empty
  or overlapping), and a ``rows`` request is
  counted first, up to :data:`~bridge.reconcile._protocol.MAX_ROWS` + 1 primary key
  entries (:meth:`~bridge.reconcile._digest.ModelDigests.count_rows`): more is
  refused ``too_large`` before a row is read.  A reply over
  :data:`~bridge.reconcile._protocol.MAX_REPLY_BYTES` (long text keys) is refused
  ``too_large`` as well.
- **Bounded in time**: each request's SQL runs in its own transaction under
  ``SET LOCAL statement_timeout`` = ``reconcile.statement_timeout``; a request that
  reaches it is refused ``timeout``.
- **Bounded in number**: at most ``reconcile.max_concurrent_requests`` are served
  at once, each in a task this responder owns; a request beyond that is refused
  ``busy`` at once, never queued.  The subscription's own queue is bounded as well
  (:data:`PENDING_MSGS_LIMIT`, :data:`PENDING_BYTES_LIMIT`): beyond it the client
  drops requests (their senders time out) instead of buffering without end.
- **Generic refusals**: a refusal carries a code, its fixed message and a request
  id; the detail (what was wrong, the exception) goes to this app's log with that id.
- **Counted**: every answer, served or refused, is reported to the observer
  (:meth:`bridge.observability.metrics.BridgeMetrics.reconcile_request`).

:meth:`ReconcileResponder.stop` drains the subscription (requests already received
are answered, beyond the limit with ``busy``), then gives the requests being served
``timeout`` seconds and cancels the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Protocol

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from bridge.errors import ReconcileRefusedError
from bridge.reconcile import _protocol as proto
from bridge.reconcile._digest import LocalSide

log = logging.getLogger("bridge.reconcile")

#: Requests the subscription buffers before the client drops more (slow consumer).
PENDING_MSGS_LIMIT = 1024
PENDING_BYTES_LIMIT = 16 * 1024 * 1024
#: SQLSTATE query_canceled: what statement_timeout raises.
QUERY_CANCELED = "57014"
_STATEMENT_TIMEOUT = text("SELECT set_config('statement_timeout', :ms, true)")


class ReconcileRequestObserver(Protocol):
    """Told the result of every answered request (``ok`` or a refusal code)."""

    def reconcile_request(self, result: str) -> None: ...


class ReconcileResponder:
    """Serves ``digests``, ``rows`` and ``reemit`` for this app's synced models."""

    def __init__(
        self, side: LocalSide, *, observer: ReconcileRequestObserver | None = None
    ) -> None:
        self._side = side
        config = self._config = side.config
        self._observer = observer
        self._limit = config.reconcile.max_concurrent_requests
        self._timeout_ms = str(max(1, round(config.reconcile.statement_timeout * 1000)))
        self._serving: set[asyncio.Task[None]] = set()
        self._sub: Subscription | None = None
        self.requests = 0

    @property
    def in_flight(self) -> int:
        """Requests being served right now."""
        return len(self._serving)

    async def start(self) -> None:
        if self._sub is not None:
            return
        subjects = self._config.subjects
        self._sub = await self._side.nc.subscribe(
            subjects.reconcile,
            queue=subjects.reconcile_group,
            cb=self._on_request,
            pending_msgs_limit=PENDING_MSGS_LIMIT,
            pending_bytes_limit=PENDING_BYTES_LIMIT,
        )
        log.info(
            "reconcile responder started",
            extra={
                "subject": subjects.reconcile,
                "resources": sorted(self._side.models),
                "max_concurrent_requests": self._limit,
            },
        )

    async def stop(self, timeout: float = 10.0) -> None:
        """Drain, then let the requests being served finish; all within ``timeout``."""
        deadline = time.monotonic() + timeout
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await asyncio.wait_for(sub.drain(), timeout)  # type: ignore[no-untyped-call]
            except Exception as exc:  # connection already closing: nothing left to answer
                log.warning("reconcile responder drain failed", extra={"error": repr(exc)})
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        serving = set(self._serving)
        if serving:
            _, pending = await asyncio.wait(serving, timeout=max(deadline - time.monotonic(), 0.0))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _on_request(self, msg: Msg) -> None:
        # Runs on the subscription's task, one message at a time: it only admits or
        # refuses, so a slow request never holds up the next one.
        if not msg.reply:
            return  # a publish, not a request: nobody to answer
        self.requests += 1
        if len(self._serving) >= self._limit:
            log.debug("reconcile request refused: busy", extra={"in_flight": self._limit})
            self._count("busy")
            await self._publish(msg.reply, proto.refusal("busy", _request_id()))
            return
        task = asyncio.create_task(self._serve(msg), name="bridge-reconcile-request")
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)

    async def _serve(self, msg: Msg) -> None:
        await self._publish(msg.reply, await self.answer(msg.data))

    async def _publish(self, subject: str, reply: bytes) -> None:
        with contextlib.suppress(Exception):  # the requester is gone or the connection closing
            await self._side.nc.publish(subject, reply)

    def _count(self, result: str) -> None:
        if self._observer is not None:
            try:
                self._observer.reconcile_request(result)
            except Exception as exc:  # metrics must never stop the responder
                log.warning("reconcile observer failed", extra={"error": repr(exc)})

    async def answer(self, data: bytes) -> bytes:
        """The reply to one request — served, or a generic refusal whose detail is
        logged under its request id — and counted (also used directly by tests)."""
        request_id = _request_id()
        try:
            reply = await self._handle(proto.decode_request(data))
        except ReconcileRefusedError as exc:
            code, detail = exc.code, str(exc)
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) != QUERY_CANCELED:
                return self._failed(request_id, exc)
            code, detail = "timeout", f"statement_timeout of {self._timeout_ms} ms reached"
        except Exception as exc:
            return self._failed(request_id, exc)
        else:
            self._count("ok")
            return reply
        log.warning(
            "reconcile request refused",
            extra={
                "request_id": request_id,
                "code": code,
                "detail": detail[:300],
                "request_bytes": len(data),
            },
        )
        self._count(code)
        return proto.refusal(code, request_id)

    def _failed(self, request_id: str, exc: Exception) -> bytes:
        log.error(
            "reconcile request failed",
            extra={"request_id": request_id, "error": repr(exc)[:1000]},
            exc_info=exc,
        )
        self._count("internal")
        return proto.refusal("internal", request_id)

    async def _handle(self, request: proto.Request) -> bytes:
        digests = self._side.models.get(request.resource)
        if digests is None:
            raise ReconcileRefusedError(
                f"{self._config.app_name} does not reconcile resource {request.resource!r}",
                code="unknown_resource",
            )
        try:  # the resource's own key: arity, kinds, ranges (module doc)
            keys = [digests.parse_key(k) for k in request.keys]
            ranges = digests.parse_ranges(request.ranges)
        except ValueError as exc:
            raise ReconcileRefusedError(f"{request.op}: {exc}", code="bad_request") from exc
        if request.op == "reemit":
            async with self._side.sessions() as session, session.begin():
                await session.execute(_STATEMENT_TIMEOUT, {"ms": self._timeout_ms})
                count = await digests.reemit(session, self._side.outbox, keys)
            log.info(
                "reconcile re-emitted rows",
                extra={"resource": request.resource, "requested": len(keys), "rows": count},
            )
            return proto.ok(reemitted=count)
        async with self._side.engine.connect() as conn:
            await conn.execute(_STATEMENT_TIMEOUT, {"ms": self._timeout_ms})
            if request.op == "digests":
                reply = proto.encode_digests(await digests.digests(conn, ranges))
            elif request.op == "split":
                reply = proto.encode_splits(await digests.split(conn, ranges))
            else:
                # Count (capped) before reading: a request for more rows than a reply
                # may carry is refused without computing a single row digest.
                if await digests.count_rows(conn, ranges, proto.MAX_ROWS + 1) > proto.MAX_ROWS:
                    raise _too_many_rows()
                rows = await digests.rows(conn, ranges)
                if len(rows) > proto.MAX_ROWS:  # rows inserted between the count and the read
                    raise _too_many_rows()
                reply = proto.encode_rows(rows)
        if len(reply) > proto.MAX_REPLY_BYTES:
            raise ReconcileRefusedError(
                f"reply of {len(reply)} bytes exceeds {proto.MAX_REPLY_BYTES}: ask narrower",
                code="too_large",
            )
        return reply


def _too_many_rows() -> ReconcileRefusedError:
    return ReconcileRefusedError(
        f"more than {proto.MAX_ROWS} rows in the requested ranges: ask narrower",
        code="too_large",
    )


def _request_id() -> str:
    return uuid.uuid4().hex[:16]
