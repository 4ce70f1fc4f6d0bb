"""Backfill: re-emit every synced row of one system through its outbox — in bounded
batches, resumable, rate-limited and held back while the relay is behind.

Use it when the other system starts empty or was restored from an old backup, or
when sync was switched on after data already existed.  It only *writes outbox
rows*; the relay of the running service (or a worker) publishes them.

Contract:

- **Order.** Models in the given order (:func:`bridge.reconcile.synced_models.load_synced_models`
  gives parents first: organizations before users); within a model, keyset
  pagination on the primary key, whatever its type or number of columns
  (``WHERE (k1, k2) > (:last1, :last2) ORDER BY k1, k2 LIMIT :batch``, in the
  columns' own types and collations — one database, so its own order serves, and
  the primary key index with it).  Each row becomes one outbox row through
  :func:`bridge.reconcile.restate.write_snapshots` (its current snapshot, its
  ``resource_id`` by the key's rule, :mod:`bridge.keys`; tombstones as
  ``<resource>.deleted``, live rows as ``<resource>.updated``).
- **One transaction per batch.** Lock the run's checkpoint row
  (``bridge_backfill_runs``, ``FOR UPDATE``), read the next rows, write their
  outbox rows, advance the checkpoint (last key, rows emitted) — then commit.  A
  crash, a kill or a cancellation mid-batch rolls the whole batch back, so nothing
  is lost and no batch is emitted twice: rows in the outbox == rows counted in the
  checkpoint.  Two processes running the same run serialise on the lock and
  continue each other's work.
- **Runs.** A run is named (``default`` unless given).  Running an unfinished run
  again resumes after its last committed batch; running a finished run again
  reports ``already_completed`` and emits nothing, unless ``restart`` is set (the
  checkpoints are reset) or another run name is used.
- **Safe at any time** because the receiver applies last-writer-wins on the row's
  version (``updated_at``, ``origin``), which the snapshot carries unchanged: a
  version the receiver already holds is a no-op, an older one is ignored as stale,
  an unknown row is inserted.  So a backfill never overwrites newer data on the
  other side, and re-running it changes nothing.  Rows the API changes while the
  backfill runs are safe too: the API's commit writes its own outbox row with a
  newer version; whichever of the two events arrives last, the receiver keeps the
  newer version.  Rows inserted behind the keyset cursor are not re-read — they
  travel through their own outbox rows.
- **Pacing.** ``rate`` (rows/s, token bucket) paces batches between transactions
  (no transaction is held open while waiting).  ``max_pending`` is backpressure:
  before each batch, while more than ``max_pending`` outbox rows are pending, the
  backfill waits (so at most ``max_pending + batch_size`` rows are pending because of
  it) — a backfill of millions never outruns the relay.  If no relay runs, it
  waits for ever, reporting the pending count through the progress callback.
- **Stopping.** :meth:`Backfill.request_stop` finishes the current batch and returns
  a ``stopped`` report; cancelling :meth:`Backfill.run` rolls the current batch back.
  Either way, the next run resumes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    String,
    cast,
    delete,
    func,
    inspect,
    literal,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Mapper

from bridge._support.rate_limit import TokenBucket
from bridge.errors import ConfigError
from bridge.outbox.capture import Outbox, Synced
from bridge.reconcile.restate import RESOURCE_ID, model_table, snapshot_query, write_snapshots
from bridge.schema import OUTBOX_PENDING, backfill_runs
from bridge.schema import outbox as outbox_table

log = logging.getLogger("bridge.backfill")

STATUS_COMPLETED = "completed"
STATUS_ALREADY_COMPLETED = "already_completed"
STATUS_STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class BackfillOptions:
    """How one backfill runs (see the module doc)."""

    run_name: str = "default"
    batch_size: int = 500
    #: Rows per second (token bucket); ``None``: as fast as the database allows.
    rate: float | None = None
    #: Wait before a batch while more outbox rows are pending; ``None``: never wait.
    max_pending: int | None = 10_000
    #: How often the pending count is checked while waiting (seconds).
    pending_poll_interval: float = 1.0
    #: Forget the run's checkpoints and start from the first row.
    restart: bool = False

    def __post_init__(self) -> None:
        if not self.run_name or len(self.run_name) > 128:
            raise ConfigError("backfill run name must be 1 to 128 characters")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.rate is not None and self.rate <= 0:
            raise ConfigError(f"rate must be > 0 rows per second, got {self.rate}")
        if self.max_pending is not None and self.max_pending < 0:
            raise ConfigError(f"max_pending must be >= 0, got {self.max_pending}")
        if self.pending_poll_interval <= 0:
            raise ConfigError("pending_poll_interval must be > 0")


@dataclass(frozen=True, slots=True)
class BackfillProgress:
    """Reported after each committed batch, and while waiting for the relay."""

    resource_type: str
    table: str
    done: int
    total: int
    #: Pending outbox rows while paused by backpressure; ``None`` when not waiting.
    waiting_for_relay: int | None = None


ProgressCallback = Callable[[BackfillProgress], None]


@dataclass(frozen=True, slots=True)
class ModelReport:
    resource_type: str
    table: str
    #: Rows emitted by this invocation.
    emitted: int
    #: Rows emitted by the run so far (all invocations).
    rows_emitted: int
    #: Rows in the table when this model started (tombstones included).
    total: int
    finished: bool


@dataclass(frozen=True, slots=True)
class BackfillReport:
    run_name: str
    status: str
    models: tuple[ModelReport, ...]
    emitted: int
    elapsed_seconds: float
    #: Time spent waiting for the rate limit or the relay (backpressure).
    paused_seconds: float


class Backfill:
    """Re-emits the rows of ``models`` through ``outbox`` (module doc for the contract)."""

    def __init__(
        self,
        engine: AsyncEngine,
        outbox: Outbox,
        models: Sequence[type[Synced]],
        options: BackfillOptions | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not models:
            raise ConfigError("backfill needs at least one synced model")
        self.options = options or BackfillOptions()
        self._engine = engine
        self._outbox = outbox
        self._models = tuple(models)
        self._clock = clock
        self._sleep = sleep
        rate = self.options.rate
        self._bucket = TokenBucket(rate, clock=clock, sleep=self._pause) if rate else None
        self._stop = asyncio.Event()
        self._paused = 0.0

    def request_stop(self) -> None:
        """Finish the batch in progress, then return a ``stopped`` report (a wait for the
        rate limit or the relay ends at once)."""
        self._stop.set()

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds`` unless a stop is requested first; adds to ``paused_seconds``."""
        if self._stop.is_set():
            return
        began = self._clock()
        sleeper = asyncio.ensure_future(self._sleep(seconds))
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, stopper):
                task.cancel()
            await asyncio.gather(sleeper, stopper, return_exceptions=True)
            self._paused += self._clock() - began

    def _session(self) -> AsyncSession:
        # The outbox's session class: its commit listeners wake an in-process relay.
        return AsyncSession(
            self._engine, sync_session_class=self._outbox.session_class, expire_on_commit=False
        )

    async def run(self, progress: ProgressCallback | None = None) -> BackfillReport:
        """Run (or resume) the backfill; see the module doc for what is committed when."""
        opts = self.options
        started = self._clock()
        self._paused = 0.0
        if opts.restart:
            async with self._engine.begin() as conn:
                await conn.execute(
                    delete(backfill_runs).where(backfill_runs.c.run_name == opts.run_name)
                )
        finished = await self._finished_checkpoints()
        if all(model_table(model).name in finished for model in self._models):
            log.info("backfill run already completed", extra={"run": opts.run_name})
            models = tuple(
                ModelReport(
                    model.__bridge_resource__, model_table(model).name, 0,
                    finished[model_table(model).name], finished[model_table(model).name], True,
                )
                for model in self._models
            )  # fmt: skip
            return BackfillReport(
                opts.run_name, STATUS_ALREADY_COMPLETED, models, 0, self._clock() - started, 0.0
            )
        log.info(
            "backfill started",
            extra={"run": opts.run_name, "batch_size": opts.batch_size, "rate": opts.rate},
        )
        reports: list[ModelReport] = []
        for model in self._models:
            report = await self._run_model(model, progress)
            reports.append(report)
            if not report.finished:
                break
        done = len(reports) == len(self._models) and all(r.finished for r in reports)
        status = STATUS_COMPLETED if done else STATUS_STOPPED
        emitted = sum(r.emitted for r in reports)
        log.info(
            "backfill finished", extra={"run": opts.run_name, "emitted": emitted, "status": status}
        )
        return BackfillReport(
            opts.run_name, status, tuple(reports), emitted, self._clock() - started, self._paused
        )

    async def _finished_checkpoints(self) -> dict[str, int]:
        """``table → rows_emitted`` of this run's finished models."""
        query = select(backfill_runs.c.table_name, backfill_runs.c.rows_emitted).where(
            backfill_runs.c.run_name == self.options.run_name,
            backfill_runs.c.finished_at.is_not(None),
        )
        async with self._engine.connect() as conn:
            return {row.table_name: int(row.rows_emitted) for row in await conn.execute(query)}

    async def _run_model(
        self, model: type[Synced], progress: ProgressCallback | None
    ) -> ModelReport:
        opts = self.options
        mapper: Mapper[Any] = inspect(model)
        table = model_table(model)
        resource = model.__bridge_resource__
        pk = list(mapper.primary_key)
        checkpoint = (backfill_runs.c.run_name == opts.run_name) & (
            backfill_runs.c.table_name == table.name
        )
        async with self._engine.begin() as conn:
            await conn.execute(
                pg_insert(backfill_runs)
                .values(run_name=opts.run_name, table_name=table.name, resource_type=resource)
                .on_conflict_do_nothing()
            )
            total = int((await conn.execute(select(func.count()).select_from(table))).scalar_one())
        emitted = done = 0
        finished = False

        def report(waiting: int | None = None) -> None:
            if progress is not None:
                progress(BackfillProgress(resource, table.name, done, max(total, done), waiting))

        while not self._stop.is_set():
            await self._wait_for_relay(report)
            if self._stop.is_set():
                break
            async with self._session() as session, session.begin():
                state = (
                    await session.execute(select(backfill_runs).where(checkpoint).with_for_update())
                ).one()
                if state.finished_at is not None:  # finished by a concurrent process
                    done, finished = int(state.rows_emitted), True
                    break
                query = snapshot_query(model).order_by(*pk).limit(opts.batch_size)
                if state.last_key is not None:
                    query = query.where(_after(pk, state.last_key, table.name, opts.run_name))
                found = (await session.execute(query)).all()
                rows = [row[0] for row in found]
                count = await write_snapshots(
                    session, self._outbox, [(row[0], row._mapping[RESOURCE_ID]) for row in found]
                )
                values: dict[str, Any] = {
                    "rows_emitted": backfill_runs.c.rows_emitted + count,
                    "updated_at": func.now(),
                }
                if rows:
                    values["last_key"] = [
                        str(v) for v in mapper.primary_key_from_instance(rows[-1])
                    ]
                if len(rows) < opts.batch_size:
                    values["finished_at"] = func.now()
                    finished = True
                done = int(
                    (
                        await session.execute(
                            update(backfill_runs)
                            .where(checkpoint)
                            .values(**values)
                            .returning(backfill_runs.c.rows_emitted)
                        )
                    ).scalar_one()
                )
            emitted += count
            log.debug(
                "backfill batch committed",
                extra={"run": opts.run_name, "table": table.name, "rows": count, "done": done},
            )
            report()
            if finished:
                break
            if self._bucket is not None and count:
                await self._bucket.take(count)
        return ModelReport(resource, table.name, emitted, done, max(total, done), finished)

    async def _wait_for_relay(self, waiting: Callable[[int], None]) -> None:
        """Backpressure: return once at most ``max_pending`` outbox rows are pending."""
        bound = self.options.max_pending
        if bound is None:
            return
        # Count at most bound + 1 rows: the check stays cheap however long the backlog.
        pending_rows = (
            select(outbox_table.c.id)
            .where(outbox_table.c.status == OUTBOX_PENDING)
            .limit(bound + 1)
            .subquery()
        )
        query = select(func.count()).select_from(pending_rows)
        logged = False
        while not self._stop.is_set():
            async with self._engine.connect() as conn:
                pending = int((await conn.execute(query)).scalar_one())
            if pending <= bound:
                return
            if not logged:
                log.info(
                    "backfill waiting for the relay",
                    extra={"run": self.options.run_name, "pending": pending, "max_pending": bound},
                )
                logged = True
            waiting(pending)
            await self._pause(self.options.pending_poll_interval)


def _after(pk: Sequence[Any], last_key: Sequence[str], table: str, run: str) -> ColumnElement[bool]:
    """``pk > last_key``, compared in the columns' own types (the key is stored as text)."""
    if not isinstance(last_key, list) or len(last_key) != len(pk):
        raise ConfigError(
            f"backfill run {run!r}: the checkpoint of {table} does not match its primary key; "
            "restart the run"
        )
    bounds = [
        cast(literal(value, String()), column.type)
        for column, value in zip(pk, last_key, strict=True)
    ]
    if len(pk) == 1:
        result: ColumnElement[bool] = pk[0] > bounds[0]
        return result
    return tuple_(*pk) > tuple_(*bounds)
