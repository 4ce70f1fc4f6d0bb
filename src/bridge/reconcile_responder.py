"""Answers the peer's reconciliation requests about this app's synced rows.

A core NATS queue subscription on :attr:`~bridge.subjects.Subjects.reconcile`
(group :attr:`~bridge.subjects.Subjects.reconcile_group`, so several instances of
an app share the requests) runs the :mod:`bridge.reconcile_digest` queries and
replies (:mod:`bridge.reconcile_protocol`):

- ``digests`` / ``rows``: read-only, one short database connection per request.
- ``reemit``: the rows are re-stated through this app's outbox
  (:meth:`~bridge.outbox.Outbox.emit_snapshots`) in one transaction; the reply
  (the number of outbox rows) is sent only after the commit, so a requester that
  sees the count knows the events will be published.  A request that times out on
  the requester's side may still commit: re-emitting a row twice is harmless (the
  receiver sees the same version).

Bad requests get an ``ok: false`` reply naming the problem, never silence.
Requests are handled one at a time per instance, on the subscription's own task
(nats-py's), so nothing else needs owning; :meth:`stop` drains the subscription:
a request being answered finishes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bridge import reconcile_protocol as proto
from bridge.config import BridgeConfig
from bridge.errors import ReconcileError
from bridge.outbox import Outbox, Synced
from bridge.reconcile_digest import ModelDigests

log = logging.getLogger("bridge.reconcile")


class ReconcileResponder:
    """Serves ``digests``, ``rows`` and ``reemit`` for this app's synced models."""

    def __init__(
        self,
        config: BridgeConfig,
        nc: Client,
        engine: AsyncEngine,
        models: Sequence[type[Synced]],
        *,
        outbox: Outbox,
        session_factory: async_sessionmaker[AsyncSession] | None = None,
    ) -> None:
        self._config = config
        self._nc = nc
        self._engine = engine
        self._outbox = outbox
        self._sessions = session_factory or async_sessionmaker(engine, expire_on_commit=False)
        self._models = {m.__bridge_resource__: ModelDigests(m) for m in models}
        self._sub: Subscription | None = None
        self.requests = 0

    async def start(self) -> None:
        if self._sub is not None:
            return
        subjects = self._config.subjects
        self._sub = await self._nc.subscribe(
            subjects.reconcile, queue=subjects.reconcile_group, cb=self._on_request
        )
        log.info(
            "reconcile responder started",
            extra={"subject": subjects.reconcile, "resources": sorted(self._models)},
        )

    async def stop(self, timeout: float = 10.0) -> None:
        sub, self._sub = self._sub, None
        if sub is None:
            return
        try:
            await asyncio.wait_for(sub.drain(), timeout)  # type: ignore[no-untyped-call]
        except Exception as exc:  # connection already closing: nothing left to answer
            log.warning("reconcile responder drain failed", extra={"error": repr(exc)})
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _on_request(self, msg: Msg) -> None:
        if not msg.reply:
            return  # a publish, not a request: nobody to answer
        self.requests += 1
        try:
            reply = await self.answer(msg.data)
        except ReconcileError as exc:
            reply = proto.error(str(exc))
        except Exception as exc:  # answer the requester instead of leaving it to time out
            log.exception("reconcile request failed")
            reply = proto.error(f"{type(exc).__name__}: {exc}")
        with contextlib.suppress(Exception):
            await self._nc.publish(msg.reply, reply)

    async def answer(self, data: bytes) -> bytes:
        """The reply to one request (also used directly by tests)."""
        request = proto.decode_request(data)
        digests = self._models.get(request.resource)
        if digests is None:
            raise ReconcileError(
                f"{self._config.app_name} does not sync resource {request.resource!r}"
            )
        if request.op == "reemit":
            async with self._sessions() as session, session.begin():
                count = await digests.reemit(session, self._outbox, request.ids)
            log.info(
                "reconcile re-emitted rows",
                extra={"resource": request.resource, "requested": len(request.ids), "rows": count},
            )
            return proto.ok(reemitted=count)
        async with self._engine.connect() as conn:
            if request.op == "digests":
                return proto.encode_digests(await digests.digests(conn, request.ranges))
            rows = await digests.rows(conn, request.ranges)
        if len(rows) > proto.MAX_ROWS:
            raise ReconcileError(
                f"{len(rows)} rows in the requested ranges exceed {proto.MAX_ROWS}: ask narrower"
            )
        return proto.encode_rows(rows)
