"""Observe both sides after a scenario and check the delivery promises against the history.

Everything is read from the real stores, not from the services: each side's database
(domain tables, ``bridge_outbox``, ``bridge_inbox``) over a fresh asyncpg connection,
and the stream over a fresh NATS connection (every message of both directions and both
dead-letter subjects, through an ephemeral consumer; consumer lag through the API).

:func:`wait_quiescent` polls, with a deadline, until nothing is left to do: no pending
outbox row, no failed inbox record, both durables with ``num_pending`` and
``num_ack_pending`` 0, and the domain tables identical on both sides.

:func:`check` then compares (each violation is named, with the record or event):

- **convergence**: ``organizations`` and ``users`` identical row-for-row on both sides
  (every column: the domain has no local-only columns);
- **no acknowledged write lost**: for every record, the row on both sides is the newest
  acknowledged write (the API's answer, field for field), or — only if an
  indeterminate write of that record came later — that later write, recognisable by
  the fields it set; every acknowledged write has its event in the stream (same record,
  same ``updated_at``) and that event is ``processed`` in the other side's inbox;
- **nothing made up**: a row no acknowledged create explains must be an indeterminate
  create (same natural key and fields);
- **exactly one outbox row per committed write, none for applied changes (no echo)**:
  ``acked <= outbox rows <= acked + indeterminate`` per side; every outbox row ``sent``
  and its event in the stream; the stream holds no event the producer's outbox lacks;
- **no event applied twice**: each event id at most once in an inbox, only in the
  receiver's, never back in its producer's; stream copies beyond one per event id are
  counted as ``duplicates_published`` (absorbed by the inbox; not a violation);
- **concurrent writers** (``lww=True``, a shared load): the record rule above is
  replaced by last-writer-wins' (:mod:`fault_lww`): a write acknowledged after its side
  applied version X never loses to X, no acked version is lost, the final row is a
  write's row;
- **replayed dead letters** (``replayed_reasons``): events the scenario dead-lettered
  with one of these reasons and replayed are folded into their originals, each applied
  exactly once through its replays (:mod:`fault_replays`);
- **dead letters**: only the expected reasons (none for this load);
- **injected poison** (``injected``: stream sequences the scenario published itself,
  bypassing every outbox): left out of the outbox/inbox accounting above, and each one
  that carries an event id must be ``dead_lettered`` in the receiver's inbox — never
  processed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import nats
import nats.js.errors
from fault_history import NATURAL_KEYS, History, Write, matches
from fault_lww import check_records_lww
from fault_replays import fold_replays
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from bridge.envelope import format_timestamp, parse_timestamp
from bridge.errors import EnvelopeError
from bridge.subjects import Subjects
from bridge.testing import to_plain_url

TABLES = {"organization": "organizations", "user": "users"}


def norm(value: Any) -> Any:
    """A database value as the API and the wire spell it."""
    if isinstance(value, datetime):
        return format_timestamp(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


@dataclass
class SideState:
    """One side's database, read in one go."""

    app: str
    rows: dict[str, dict[str, dict[str, Any]]]  # resource -> id -> row (normalised)
    outbox: list[dict[str, Any]]
    inbox: list[dict[str, Any]]


@dataclass(frozen=True)
class StreamMessage:
    seq: int
    subject: str
    msg_id: str | None
    event_id: str | None
    resource_type: str | None
    resource_id: str | None
    updated_at: str | None
    reason: str | None  # x-dlq-reason on dead letters
    detail: str | None = None  # the other x-dlq-* headers of a dead letter
    causation_id: str | None = None  # a DLQ replay: the event it replays


async def read_side(database_url: str, app: str) -> SideState:
    conn = await asyncpg.connect(to_plain_url(database_url), timeout=5)
    try:
        rows: dict[str, dict[str, dict[str, Any]]] = {}
        for resource, table in TABLES.items():
            records = await conn.fetch(f"SELECT * FROM {table} ORDER BY id")
            rows[resource] = {
                str(r["id"]): {k: norm(v) for k, v in dict(r).items()} for r in records
            }
        outbox = [
            dict(r)
            for r in await conn.fetch(
                "SELECT event_id::text, subject, status, resource_type, resource_id, attempts"
                " FROM bridge_outbox ORDER BY id"
            )
        ]
        inbox = [
            dict(r)
            for r in await conn.fetch(
                "SELECT event_id::text, subject, status, resource_type, resource_id, attempts"
                " FROM bridge_inbox"
            )
        ]
    finally:
        await conn.close()
    return SideState(app, rows, outbox, inbox)


async def read_stream(nats_urls: Sequence[str], stream: str) -> list[StreamMessage]:
    """Every message of the stream, in order (ephemeral consumer, no acks)."""
    nc = await nats.connect(list(nats_urls), connect_timeout=2, max_reconnect_attempts=5)
    try:
        js = nc.jetstream(timeout=5)
        info = await js.stream_info(stream)
        total = info.state.messages
        out: list[StreamMessage] = []
        if total == 0:
            return out
        sub = await js.pull_subscribe(
            ">",
            stream=stream,
            config=ConsumerConfig(
                ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, mem_storage=True
            ),
        )
        deadline = time.monotonic() + 30
        while len(out) < total and time.monotonic() < deadline:
            try:
                batch = await sub.fetch(min(500, total - len(out)), timeout=2)
            except nats.errors.TimeoutError:
                continue
            except nats.js.errors.ServiceUnavailableError:
                # A cluster answers 503 while the new consumer (or, after a node was
                # killed, the stream) has no leader yet: elected within seconds.
                await asyncio.sleep(0.2)
                continue
            for msg in batch:
                out.append(_parse(msg))
        await sub.unsubscribe()
        if len(out) < total:
            raise AssertionError(f"read {len(out)} of {total} stream messages")
        return out
    finally:
        await nc.close()


def _parse(msg: Any) -> StreamMessage:
    headers = msg.headers or {}
    body: dict[str, Any] = {}
    # injected poison may be anything (nested too deep to parse, not an object, ...)
    with contextlib.suppress(ValueError, RecursionError):
        parsed = json.loads(msg.data)
        body = parsed if isinstance(parsed, dict) else {}
    payload = body.get("payload") if isinstance(body.get("payload"), dict) else {}
    resource_id = body.get("resource_id")
    return StreamMessage(
        seq=msg.metadata.sequence.stream,
        subject=msg.subject,
        msg_id=headers.get("Nats-Msg-Id"),
        event_id=_text(body.get("event_id")),
        resource_type=_text(body.get("resource_type")),
        resource_id=str(resource_id) if isinstance(resource_id, (str, int)) else None,
        updated_at=_ts(payload.get("updated_at")),
        reason=headers.get("x-dlq-reason"),
        detail=", ".join(
            f"{k[6:]}={v}" for k, v in sorted(headers.items()) if k.startswith("x-dlq-")
        )
        or None,
        causation_id=body.get("causation_id"),
    )


def _ts(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return format_timestamp(parse_timestamp(value))
    except EnvelopeError:  # injected poison
        return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


async def consumer_lag(
    nats_urls: Sequence[str], stream: str, durables: Sequence[str]
) -> dict[str, Any]:
    nc = await nats.connect(list(nats_urls), connect_timeout=2, max_reconnect_attempts=5)
    try:
        js = nc.jetstream(timeout=5)
        lag = {}
        for durable in durables:
            info = await js.consumer_info(stream, durable)
            lag[durable] = {
                "num_pending": info.num_pending,
                "num_ack_pending": info.num_ack_pending,
                # Every delivery, redeliveries included, bumps the consumer sequence.
                "deliveries": info.delivered.consumer_seq if info.delivered else 0,
            }
        return lag
    finally:
        await nc.close()


async def quiescent_now(
    sides: Sequence[tuple[str, str, str]], nats_urls: Sequence[str], stream: str
) -> tuple[bool, dict[str, Any]]:
    """``sides``: (app, peer, database_url).  True when nothing is left in flight."""
    states = [await read_side(url, app) for app, _peer, url in sides]
    lag = await consumer_lag(
        nats_urls, stream, [Subjects(app, peer).durable for app, peer, _ in sides]
    )
    detail: dict[str, Any] = {"lag": lag}
    busy = False
    for state in states:
        statuses = Counter(r["status"] for r in state.outbox)
        failed_inbox = sum(1 for r in state.inbox if r["status"] == "failed")
        detail[state.app] = {"outbox": dict(statuses), "inbox_failed": failed_inbox}
        busy |= bool(statuses.get("pending") or failed_inbox)
    busy |= any(v["num_pending"] or v["num_ack_pending"] for v in lag.values())
    busy |= any(states[0].rows[r] != states[1].rows[r] for r in TABLES)
    return not busy, detail


async def wait_quiescent(
    sides: Sequence[tuple[str, str, str]],
    nats_urls: Sequence[str],
    stream: str,
    *,
    timeout: float,
) -> tuple[bool, float, dict[str, Any]]:
    """Poll until quiescent or ``timeout``; (reached, seconds taken, last detail)."""
    started = time.monotonic()
    detail: dict[str, Any] = {}
    while time.monotonic() - started < timeout:
        try:
            done, detail = await quiescent_now(sides, nats_urls, stream)
        except Exception as exc:  # a store still coming back: keep polling
            done, detail = False, {"error": f"{type(exc).__name__}: {exc}"}
        if done:
            return True, time.monotonic() - started, detail
        await asyncio.sleep(0.25)
    return False, time.monotonic() - started, detail


@dataclass
class Verdict:
    """What :func:`check` found; ``violations`` empty means every promise held."""

    events_written: int = 0
    events_lost: int = 0
    duplicates_applied: int = 0
    duplicates_published: int = 0
    echoes: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)
    unexpected_dead_letters: int = 0
    stream_messages: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    def fail(self, text: str) -> None:
        self.violations.append(text)


def check(
    history: History,
    a: SideState,
    b: SideState,
    messages: Sequence[StreamMessage],
    *,
    expected_dead_letters: Counter[str] | None = None,
    injected: Collection[int] = (),
    lww: bool = False,
    replayed_reasons: Collection[str] = (),
    replayed_letters: Mapping[str, str] | None = None,
) -> Verdict:
    verdict = Verdict()
    states = {a.app: a, b.app: b}
    peer = {a.app: b.app, b.app: a.app}
    verdict.stream_messages = dict(sorted(Counter(m.subject for m in messages).items()))
    poison = [m for m in messages if m.seq in injected]
    if poison:
        a, b = _check_poison(poison, a, b, verdict)
        states = {a.app: a, b.app: b}
        messages = [m for m in messages if m.seq not in injected]
    replayed: Counter[str] = Counter()
    if replayed_reasons:
        (a, b), messages, replayed = fold_replays(
            (a, b), messages, replayed_reasons, verdict, replayed_letters
        )
        states = {a.app: a, b.app: b}
    by_subject: dict[str, list[StreamMessage]] = {}
    for message in messages:
        by_subject.setdefault(message.subject, []).append(message)
    verdict.rows = {f"{s.app}.{r}": len(s.rows[r]) for s in (a, b) for r in TABLES}

    # convergence: row for row
    for resource in TABLES:
        for record_id in sorted(set(a.rows[resource]) | set(b.rows[resource])):
            row_a, row_b = a.rows[resource].get(record_id), b.rows[resource].get(record_id)
            if row_a != row_b:
                verdict.fail(f"diverged {resource} {record_id}: {a.app}={row_a} {b.app}={row_b}")

    if lww:
        _check_phantoms(history, a, verdict, check_records_lww(history, a.rows, verdict))
    else:
        _check_records(history, a, verdict)
    _check_events(history, states, peer, by_subject, verdict)
    _check_dead_letters(states, by_subject, expected_dead_letters or Counter(), verdict)
    if replayed:
        verdict.dead_letters = dict(sorted((Counter(verdict.dead_letters) + replayed).items()))
    return verdict


def _check_poison(
    poison: Sequence[StreamMessage], a: SideState, b: SideState, verdict: Verdict
) -> tuple[SideState, SideState]:
    """Injected messages are dead letters in the receiver's inbox, never processed; the
    states returned leave their inbox records out of the event accounting."""
    ids = {m.event_id for m in poison if m.event_id} | {m.msg_id for m in poison if m.msg_id}
    for side in (a, b):
        for record in side.inbox:
            if record["event_id"] in ids and record["status"] != "dead_lettered":
                verdict.fail(
                    f"injected poison {record['event_id']} is {record['status']} "
                    f"in {side.app}'s inbox (want dead_lettered)"
                )
    return tuple(  # type: ignore[return-value]
        SideState(s.app, s.rows, s.outbox, [r for r in s.inbox if r["event_id"] not in ids])
        for s in (a, b)
    )


def _check_records(history: History, side: SideState, verdict: Verdict) -> None:
    """Final rows against the acknowledged history (``side``: after convergence, one suffices)."""
    explained: set[tuple[str, str]] = set()
    for (resource, record_id), writes in history.records().items():
        acked = [w for w in writes if w.outcome == "acked"]
        if not acked:
            continue
        explained.add((resource, record_id))
        last = acked[-1]
        row = side.rows[resource].get(record_id)
        if row is None:
            verdict.events_lost += 1
            verdict.fail(f"lost: acked {last.kind} of {resource} {record_id} has no row")
            continue
        if matches(row, last.response or {}):
            continue
        later = [w for w in writes if w.seq > last.seq and w.outcome == "indeterminate"]
        if row["updated_at"] > (last.response or {})["updated_at"] and any(
            matches(row, w.request) for w in later
        ):
            continue
        verdict.events_lost += 1
        verdict.fail(
            f"lost: {resource} {record_id} ends as {row} but the newest acked write "
            f"(#{last.seq} on {last.app}) answered {last.response}"
        )
    _check_phantoms(history, side, verdict, explained)


def _check_phantoms(
    history: History, side: SideState, verdict: Verdict, explained: set[tuple[str, str]]
) -> None:
    """Rows no acknowledged create explains: only an indeterminate create may have made them."""
    for resource in TABLES:
        unknown = [rid for rid in side.rows[resource] if (resource, rid) not in explained]
        maybe = [
            w for w in history.by_outcome("indeterminate")
            if w.kind == "create" and w.resource == resource
        ]  # fmt: skip
        for record_id in unknown:
            row = side.rows[resource][record_id]
            key = NATURAL_KEYS[resource]
            if not any(w.natural_key == row[key] and matches(row, w.request) for w in maybe):
                verdict.fail(f"phantom {resource} {record_id}: {row}")


def _check_events(
    history: History,
    states: dict[str, SideState],
    peer: dict[str, str],
    by_subject: dict[str, list[StreamMessage]],
    verdict: Verdict,
) -> None:
    for app, state in states.items():
        receiver = states[peer[app]]
        subject = Subjects(app, peer[app]).publish
        stream_msgs = by_subject.get(subject, [])
        stream_ids = Counter(m.event_id for m in stream_msgs)
        verdict.duplicates_published += sum(n - 1 for n in stream_ids.values())
        outbox_ids = [r["event_id"] for r in state.outbox]
        verdict.events_written += len(outbox_ids)

        # one outbox row per committed write through this side's API; none for applied ones
        acked, maybe = history.acked_count(app), history.indeterminate_count(app)
        if len(outbox_ids) > acked + maybe:
            verdict.echoes += len(outbox_ids) - acked - maybe
            verdict.fail(
                f"{app}: {len(outbox_ids)} outbox rows for {acked} acked + {maybe} "
                "indeterminate API writes (echo or double capture)"
            )
        if len(outbox_ids) < acked:
            verdict.fail(f"{app}: {len(outbox_ids)} outbox rows for {acked} acked writes")
        not_sent = [r for r in state.outbox if r["status"] != "sent"]
        if not_sent:
            verdict.events_lost += len(not_sent)
            verdict.fail(f"{app}: outbox rows not sent: {not_sent[:5]}")
        unpublished = set(outbox_ids) - set(stream_ids)
        if unpublished:
            verdict.events_lost += len(unpublished)
            verdict.fail(f"{app}: outbox events missing from the stream: {sorted(unpublished)[:5]}")
        foreign = set(stream_ids) - set(outbox_ids)
        if foreign:
            verdict.fail(
                f"{subject}: events no outbox row of {app} explains: {sorted(foreign)[:5]}"
            )

        # every stream event applied exactly once, by the receiver only
        inbox = [r for r in receiver.inbox if r["subject"] == subject]
        inbox_ids = Counter(r["event_id"] for r in inbox)
        verdict.duplicates_applied += sum(n - 1 for n in inbox_ids.values())
        processed = {r["event_id"] for r in inbox if r["status"] == "processed"}
        unapplied = set(stream_ids) - processed
        if unapplied:
            verdict.events_lost += len(unapplied)
            statuses = Counter(r["status"] for r in inbox if r["event_id"] in unapplied)
            verdict.fail(
                f"{subject}: {len(unapplied)} events not processed by {receiver.app} "
                f"(inbox statuses {dict(statuses)}): {sorted(unapplied)[:5]}"
            )
        phantom = set(inbox_ids) - set(stream_ids)
        if phantom:
            verdict.fail(
                f"{receiver.app} inbox holds events not in {subject}: {sorted(phantom)[:5]}"
            )
        own = {r["event_id"] for r in state.inbox} & set(outbox_ids)
        if own:
            verdict.duplicates_applied += len(own)
            verdict.fail(f"{app} applied its own events (echo loop): {sorted(own)[:5]}")

        # every acknowledged write has its event in the stream
        index = {(m.resource_type, m.resource_id, m.updated_at) for m in stream_msgs}
        for write in history.writes:
            if write.app != app or write.outcome != "acked" or write.response is None:
                continue
            key = (write.resource, write.record_id, write.response["updated_at"])
            if key not in index:
                verdict.events_lost += 1
                verdict.fail(f"lost: acked write #{write.seq} {key} has no event on {subject}")


def _check_dead_letters(
    states: dict[str, SideState],
    by_subject: dict[str, list[StreamMessage]],
    expected: Counter[str],
    verdict: Verdict,
) -> None:
    found: Counter[str] = Counter()
    for app in states:
        for message in by_subject.get(Subjects(app, "x").dlq, []):
            found[message.reason or "unknown"] += 1
    verdict.dead_letters = dict(found)
    unexpected = found - expected
    verdict.unexpected_dead_letters = sum(unexpected.values())
    if unexpected:
        verdict.fail(f"unexpected dead letters: {dict(unexpected)}")
        for app in states:
            for message in by_subject.get(Subjects(app, "x").dlq, []):
                if message.reason in unexpected:
                    verdict.fail(
                        f"dead letter {message.event_id} ({message.resource_type} "
                        f"{message.resource_id}): {message.detail}"
                    )


def summarize_writes(writes: Sequence[Write]) -> Counter[str]:
    return Counter(w.outcome for w in writes)
