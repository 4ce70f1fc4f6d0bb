"""Anti-entropy reconciliation: find rows that differ between this app and its peer
and repair them by re-emitting the newer version through an outbox.

One pass (:meth:`Reconciler.run`), model by model in dependency order (parents
first, :func:`bridge.reconcile.synced_models.load_synced_models`):

1. **Compare ranges.**  Start with the whole table (the key range with no bounds,
   :class:`~bridge.reconcile._digest.KeyRange`, any key type).  Local digests
   come from this app's database, the peer's from a ``digests`` request to its
   :class:`~bridge.reconcile.responder.ReconcileResponder` (core NATS
   request/reply, :mod:`bridge.reconcile._protocol`), both by the same queries
   (:mod:`bridge.reconcile._digest`).  Equal (count, digest) → the range is in sync
   and nothing else about it crosses the wire: two identical tables cost one
   request per model.
2. **Narrow** a differing range into up to 16 sub-ranges of about equal row counts,
   cut at keys of the side holding more rows in it (locally, or by a ``split``
   request to the peer), down to *leaves* of at most ``leaf_rows`` rows
   (:func:`bridge.reconcile.repair.narrow`); after :data:`MAX_ROUNDS` rounds every
   differing range is a leaf.
3. **Compare rows** of the leaves (key, version, row digest; never the row itself)
   and decide per differing row which side re-emits it — the repair rule,
   :func:`bridge.reconcile.repair.decide`.
4. **Repair.**  Local rows are re-emitted through this app's outbox
   (:func:`bridge.reconcile.restate.write_snapshots`, one transaction per model);
   peer rows through ``reemit`` requests (the peer's outbox).  The relays publish
   them and the consumers apply them last-writer-wins; the pass does not wait for
   that, so "repaired" means "re-emitted".

The peer may refuse a request (:class:`~bridge.errors.ReconcileRefusedError`, a
code and its request id, never its text): ``busy`` is asked again after a backoff
(:data:`BUSY_RETRY_BASE` doubling up to :data:`BUSY_RETRY_MAX`, full jitter) for up
to ``reconcile.request_timeout``; any other refusal, or a peer still busy then,
fails the pass with that error (recorded; a periodic pass runs again next interval).

Only one pass per app runs at a time: a session advisory lock
(:data:`LOCK_CLASS`, ``hashtext(app)``) on this app's database, held on its own
connection for the pass (session locks are reentrant, so the pass never takes it
on a connection that could already hold it: that one is released or discarded
before it goes back to the pool); a second pass raises
:class:`~bridge.errors.ReconcileBusyError` instead of running.  Every pass
(also a failed one, with its error) is recorded in ``bridge_reconcile_runs``.

Limits: rows written while a pass runs may be reported as different and
re-emitted — harmless, the receiver keeps the greater version.  A pass repairs
what it found; it does not verify that the peer applied it (the next pass would
find it again).  Digest queries scan each compared range: a pass over identical
tables reads every row once on each side.

:class:`bridge.reconcile.schedule.PeriodicReconciler` runs a pass every
``reconcile.interval`` seconds (off by default); ``bridge reconcile`` runs one on demand.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from sqlalchemy import insert, text

from bridge._support.backoff import backoff_delay
from bridge.config import BridgeConfig
from bridge.errors import ReconcileBusyError, ReconcileError, ReconcileRefusedError
from bridge.keys import Key
from bridge.reconcile import _protocol as proto
from bridge.reconcile._digest import WHOLE, KeyRange, LocalSide, ModelDigests, RangeDigest
from bridge.reconcile.repair import (
    ReconcileObserver,
    ReconcileReport,
    decide,
    narrow,
)
from bridge.schema import reconcile_runs

log = logging.getLogger("bridge.reconcile")
T = TypeVar("T")

#: Rows one ``rows`` request asks for at most (leaves are grouped up to this).
ROWS_PER_REQUEST = 2048
#: Narrowing rounds before every differing range is compared row by row (each round
#: cuts a range's rows sixteen ways: far more than any table needs).
MAX_ROUNDS = 12
#: Request bytes left for ranges or keys (the envelope of a request is far smaller).
_ITEM_BYTES = proto.MAX_REQUEST_BYTES - 1024
#: Advisory lock class of reconciliation passes ("rc"); the key is hashtext(app name).
LOCK_CLASS = 0x7263
#: Backoff of a request the peer refused as ``busy`` (seconds).
BUSY_RETRY_BASE, BUSY_RETRY_MAX = 0.1, 2.0


@dataclass
class _Tally:
    ranges: int = 0
    rows: int = 0
    to_peer: int = 0
    from_peer: int = 0
    unresolved: int = 0
    requests: int = 0
    sent: int = 0
    received: int = 0
    resources: list[str] = field(default_factory=list)


# -- the pass --------------------------------------------------------------------------
class Reconciler:
    """Runs reconciliation passes of ``side``'s app against its destination."""

    def __init__(self, side: LocalSide, *, observer: ReconcileObserver | None = None) -> None:
        self._side = side
        self._config = side.config
        self._observer = observer
        self._peer: PeerRequests | None = None

    async def run(self) -> ReconcileReport:
        """One pass (module doc); raises :class:`ReconcileBusyError` if one is running."""
        async with self._side.engine.connect() as lock_conn:
            locked = await lock_conn.scalar(
                text("SELECT pg_try_advisory_lock(:cls, hashtext(:app))"),
                {"cls": LOCK_CLASS, "app": self._config.app_name},
            )
            await lock_conn.commit()
            if not locked:
                raise ReconcileBusyError(
                    f"another reconciliation of {self._config.app_name} is running"
                )
            try:
                return await self._run_locked()
            finally:
                try:
                    await lock_conn.execute(
                        text("SELECT pg_advisory_unlock(:cls, hashtext(:app))"),
                        {"cls": LOCK_CLASS, "app": self._config.app_name},
                    )
                    await lock_conn.commit()
                except Exception:  # never return a connection holding the lock to the pool
                    await lock_conn.invalidate()

    async def _run_locked(self) -> ReconcileReport:
        started, clock = datetime.now(UTC), time.monotonic()
        tally, error = _Tally(), None
        self._peer = PeerRequests(self._side.nc, self._config)
        try:
            await self._peer.start()
            for model in self._side.models.values():
                tally.resources.append(model.resource)
                await self._reconcile_model(model, tally)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            await self._peer.stop()
            self._peer = None
            report = ReconcileReport(
                peer=self._config.destination_app,
                started_at=started,
                finished_at=datetime.now(UTC),
                duration_seconds=time.monotonic() - clock,
                resources=tuple(tally.resources),
                ranges_compared=tally.ranges,
                rows_compared=tally.rows,
                repaired_to_peer=tally.to_peer,
                repaired_from_peer=tally.from_peer,
                unresolved=tally.unresolved,
                requests=tally.requests,
                bytes_sent=tally.sent,
                bytes_received=tally.received,
                error=error,
            )
            await self._record(report)
        log.info("reconciliation finished", extra=report.to_dict())
        return report

    async def _record(self, report: ReconcileReport) -> None:
        row = report.to_dict()
        row["started_at"], row["finished_at"] = report.started_at, report.finished_at
        columns = {c.name for c in reconcile_runs.columns} - {"id"}
        try:
            async with self._side.engine.begin() as conn:
                await conn.execute(
                    insert(reconcile_runs), {k: v for k, v in row.items() if k in columns}
                )
        except Exception as exc:  # the pass's outcome matters more than its record
            log.warning("could not record reconciliation run", extra={"error": repr(exc)})
        if self._observer is not None:
            self._observer.reconcile_done(report)

    async def _reconcile_model(self, model: ModelDigests, tally: _Tally) -> None:
        pending: list[KeyRange] = [WHOLE]
        leaf_rows = self._config.reconcile.leaf_rows
        rounds = 0
        while pending:
            rounds += 1
            to_split: list[KeyRange] = []
            by_peer: list[KeyRange] = []
            leaves: list[RangeDigest] = []
            for chunk in _chunks(pending, proto.MAX_RANGES, _range_bytes):
                async with self._side.engine.connect() as conn:
                    local = await model.digests(conn, chunk)
                reply = await self._request(
                    proto.Request("digests", model.resource, ranges=tuple(chunk)), tally
                )
                splits, found = narrow(local, proto.digests_of(reply, chunk), leaf_rows=leaf_rows)
                if rounds >= MAX_ROUNDS:  # compare what is left row by row
                    found += [RangeDigest(s.range, s.count, "") for s in splits]
                    splits = []
                to_split += [s.range for s in splits if not s.by_peer]
                by_peer += [s.range for s in splits if s.by_peer]
                leaves += found
            tally.ranges += len(pending)
            for group in _leaf_groups(leaves):
                await self._repair_leaves(model, group, tally)
            pending = await self._split(model, to_split, by_peer, tally)

    async def _split(
        self, model: ModelDigests, local: list[KeyRange], peer: list[KeyRange], tally: _Tally
    ) -> list[KeyRange]:
        """The sub-ranges of ``local`` (cut here) and ``peer`` (cut by the peer)."""
        children: list[KeyRange] = []
        for chunk in _chunks(local, proto.MAX_RANGES, _range_bytes):
            async with self._side.engine.connect() as conn:
                cuts = await model.split(conn, chunk)
            children += [c for r, keys in zip(chunk, cuts, strict=True) for c in r.children(keys)]
        for chunk in _chunks(peer, proto.MAX_SPLIT_RANGES, _range_bytes):
            reply = await self._request(
                proto.Request("split", model.resource, ranges=tuple(chunk)), tally
            )
            cuts = proto.splits_of(reply, model, chunk)
            children += [c for r, keys in zip(chunk, cuts, strict=True) for c in r.children(keys)]
        return children

    async def _repair_leaves(
        self, model: ModelDigests, ranges: list[KeyRange], tally: _Tally
    ) -> None:
        async with self._side.engine.connect() as conn:
            local = await model.rows(conn, ranges)
        reply = await self._request(
            proto.Request("rows", model.resource, ranges=tuple(ranges)), tally
        )
        peer = proto.rows_of(reply, model)
        tally.rows += len({r.key for r in local} | {r.key for r in peer})
        repairs = decide(
            local, peer, local_app=self._config.app_name, peer_app=self._config.destination_app
        )
        if repairs.unresolved:
            log.warning(
                "rows differ but their origin names neither app; left alone",
                extra={"resource": model.resource, "keys": [list(k) for k in repairs.unresolved]},
            )
        tally.unresolved += len(repairs.unresolved)
        if repairs.to_peer:
            async with self._side.sessions() as session, session.begin():
                tally.to_peer += await model.reemit(session, self._side.outbox, repairs.to_peer)
        for keys in _chunks(list(repairs.from_peer), proto.MAX_IDS, _key_bytes):
            reply = await self._request(
                proto.Request("reemit", model.resource, keys=tuple(keys)), tally
            )
            tally.from_peer += int(reply.get("reemitted", 0))

    async def _request(self, request: proto.Request, tally: _Tally) -> dict[str, Any]:
        assert self._peer is not None
        data, timeout, attempt = request.encode(), self._config.reconcile.request_timeout, 0
        deadline = time.monotonic() + timeout
        while True:
            attempt += 1
            reply = await self._peer.request(data, timeout=timeout, op=request.op)
            tally.requests += 1
            tally.sent += len(data)
            tally.received += len(reply)
            try:
                return proto.decode_reply(reply)
            except ReconcileRefusedError as exc:  # busy: ask again later (module doc)
                delay = BUSY_RETRY_BASE + backoff_delay(
                    attempt, base=BUSY_RETRY_BASE, maximum=BUSY_RETRY_MAX
                )
                if exc.code != "busy" or time.monotonic() + delay > deadline:
                    raise
                log.info(
                    "reconciliation peer busy; asking again",
                    extra={"op": request.op, "attempt": attempt, "retry_in": round(delay, 3)},
                )
                await asyncio.sleep(delay)


class PeerRequests:
    """Requests to the peer's responder whose replies come back under this app's own
    reconcile reply prefix (``{app}.bridge.reconcile.reply.<client>.<n>``), so in
    restrictive mode the peer needs publish rights only there
    (:mod:`bridge.provisioning.permissions`).  One subscription per pass, owned by the pass."""

    def __init__(self, nc: Client, config: BridgeConfig) -> None:
        self._nc = nc
        self._subject = config.subjects.peer_reconcile
        self._peer = config.destination_app
        self._prefix = f"{config.subjects.reconcile_replies}.{uuid.uuid4().hex}"
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._sent = 0
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(f"{self._prefix}.*", cb=self._on_reply)

    async def stop(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):  # connection closing: nothing to clean up
                await sub.unsubscribe()

    async def _on_reply(self, msg: Msg) -> None:
        future = self._waiting.pop(msg.subject, None)
        if future is not None and not future.done():
            future.set_result(msg)

    async def request(self, data: bytes, *, timeout: float, op: str = "request") -> bytes:
        """Send ``data``; the reply body, or :class:`ReconcileError` (no responder, timeout)."""
        self._sent += 1
        reply_to = f"{self._prefix}.{self._sent}"
        future: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._waiting[reply_to] = future
        try:
            await self._nc.publish(self._subject, data, reply=reply_to)
            msg = await asyncio.wait_for(future, timeout)
        except TimeoutError as exc:
            raise ReconcileError(
                f"{op} request to {self._subject} timed out after {timeout}s"
            ) from exc
        finally:
            self._waiting.pop(reply_to, None)
        if (msg.headers or {}).get("Status") == "503":
            raise ReconcileError(
                f"no reconciliation responder on {self._subject}: is {self._peer} "
                "running with its synced models?"
            )
        return msg.data


def _range_bytes(r: KeyRange) -> int:
    return len(json.dumps(r.to_json(), ensure_ascii=False).encode()) + 1


def _key_bytes(key: Key) -> int:
    return len(json.dumps(list(key), ensure_ascii=False).encode()) + 1


def _chunks(items: Sequence[T], size: int, cost: Callable[[T], int]) -> list[list[T]]:
    """``items`` in order, in lists of at most ``size`` whose encoded items fit one request."""
    chunks: list[list[T]] = []
    used = 0
    for item in items:
        bytes_ = cost(item)
        if not chunks or len(chunks[-1]) >= size or used + bytes_ > _ITEM_BYTES:
            chunks.append([])
            used = 0
        chunks[-1].append(item)
        used += bytes_
    return chunks


def _leaf_groups(leaves: Sequence[RangeDigest]) -> list[list[KeyRange]]:
    """Leaves grouped so one ``rows`` request stays within the row, range and byte limits."""
    groups: list[list[KeyRange]] = []
    rows = used = 0
    for leaf in leaves:
        bytes_ = _range_bytes(leaf.range)
        if (
            not groups
            or rows + leaf.count > ROWS_PER_REQUEST
            or len(groups[-1]) >= proto.MAX_RANGES
            or used + bytes_ > _ITEM_BYTES
        ):
            groups.append([])
            rows = used = 0
        groups[-1].append(leaf.range)
        rows += leaf.count
        used += bytes_
    return groups
