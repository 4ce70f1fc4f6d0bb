"""Capture happens in the caller's transaction: rollback → nothing, commit → one row."""

from __future__ import annotations

import pytest
from sqlalchemy import func, literal_column, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from bridge.envelope import Envelope
from bridge.outbox.body import envelope_sql
from bridge.outbox.capture import Outbox, skip_publish
from bridge.schema import outbox
from bridge.testing import NatsServer

from .conftest import Widget, relay_config, scalar


async def outbox_rows(engine: AsyncEngine) -> list[dict]:  # type: ignore[type-arg]
    async with engine.connect() as conn:
        envelope = literal_column(envelope_sql()).label("payload")
        result = await conn.execute(select(outbox, envelope).order_by(outbox.c.id))
        return [dict(r) for r in result.mappings()]


async def test_rollback_writes_nothing_commit_writes_one_row(
    engine: AsyncEngine, nats_server: NatsServer, unique: str
) -> None:
    cfg = relay_config(nats_server.url, unique)
    box = Outbox(cfg)
    woken: list[int] = []
    box.add_commit_listener(lambda: woken.append(1))
    sessions = async_sessionmaker(
        engine, sync_session_class=box.session_class, expire_on_commit=False
    )

    async with sessions() as session:
        session.add(Widget(name="rolled back"))
        await session.flush()
        await session.rollback()
    assert await outbox_rows(engine) == []
    assert woken == []

    async with sessions.begin() as session:  # applied from a peer: capture off
        with skip_publish(session):
            session.add(Widget(name="applied"))
    assert await outbox_rows(engine) == []
    assert woken == []  # nothing captured: no relay is woken for an empty claim

    async with sessions.begin() as session:
        widget = Widget(name="kept")
        session.add(widget)
    rows = await outbox_rows(engine)
    assert len(rows) == 1 and woken == [1]
    row = rows[0]
    assert row["event_type"] == "widget.created" and row["resource_id"] == widget.id
    assert row["subject"] == cfg.subjects.publish and row["status"] == "pending"
    env = Envelope.from_dict(row["payload"])
    assert env.event_id == str(row["event_id"])
    assert row["headers"] == {}  # the relay sets Nats-Msg-Id from event_id
    assert env.payload["name"] == "kept" and env.payload["id"] == widget.id
    assert env.producer == cfg.app_name


async def test_update_delete_skip_and_no_net_change(
    engine: AsyncEngine, nats_server: NatsServer, unique: str
) -> None:
    box = Outbox(relay_config(nats_server.url, unique))
    sessions = async_sessionmaker(
        engine, sync_session_class=box.session_class, expire_on_commit=False
    )
    async with sessions.begin() as session:
        widget = Widget(name="v1")
        session.add(widget)
    async with sessions.begin() as session:
        w = await session.get(Widget, widget.id)
        assert w is not None
        w.name = "v1"  # no net change → no event
    async with sessions.begin() as session:
        w = await session.get(Widget, widget.id)
        assert w is not None
        w.name = "v2"
        await session.flush()
        w.name = "v3"  # second flush in the same transaction → second row, in order
    async with sessions.begin() as session:
        with skip_publish(session):
            w = await session.get(Widget, widget.id)
            assert w is not None
            w.name = "applied from the other side"
    async with sessions.begin() as session:
        w = await session.get(Widget, widget.id)
        await session.delete(w)
    rows = await outbox_rows(engine)
    assert [(r["event_type"], r["payload"]["payload"]["name"]) for r in rows] == [
        ("widget.created", "v1"),
        ("widget.updated", "v2"),
        ("widget.updated", "v3"),
        ("widget.deleted", "applied from the other side"),
    ]


async def test_two_apps_in_one_process_capture_separately(
    engine: AsyncEngine, nats_server: NatsServer, unique: str
) -> None:
    box_a = Outbox(relay_config(nats_server.url, unique))
    box_b = Outbox(relay_config(nats_server.url, unique + "x"))
    plain = async_sessionmaker(engine)
    async with async_sessionmaker(engine, sync_session_class=box_a.session_class).begin() as s:
        s.add(Widget(name="a"))
    async with async_sessionmaker(engine, sync_session_class=box_b.session_class).begin() as s:
        s.add(Widget(name="b"))
    # Outside a bridge session, with no producer recorded: the write fails, naming the fix.
    with pytest.raises(DBAPIError, match=r"no producer recorded .* widgets"):
        async with plain.begin() as s:
            s.add(Widget(name="before any bridge start"))
    assert await scalar(engine, "SELECT count(*) FROM widgets") == 2
    await box_a.record_producer(engine)
    async with plain.begin() as s:
        s.add(Widget(name="plain session, attributed to the recorded producer"))
    rows = await outbox_rows(engine)
    assert [(r["subject"], r["payload"]["producer"]) for r in rows] == [
        (box_a_subject(unique), f"a{unique}"),
        (box_a_subject(unique + "x"), f"a{unique}x"),
        (box_a_subject(unique), f"a{unique}"),
    ]


def box_a_subject(unique: str) -> str:
    return f"a{unique}.sync.b{unique}"


async def test_enqueue_explicit_event_in_callers_transaction(
    engine: AsyncEngine, nats_server: NatsServer, unique: str
) -> None:
    box = Outbox(relay_config(nats_server.url, unique))
    sessions = async_sessionmaker(engine, sync_session_class=box.session_class)
    env = Envelope(
        event_type="report.generated",
        producer="x",
        resource_type="report",
        resource_id="r1",
        payload={"n": 1},
    )
    async with sessions() as session:
        await box.enqueue(session, env)
        await session.rollback()
    assert await outbox_rows(engine) == []
    async with sessions.begin() as session:
        await box.enqueue(session, env)
    async with engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(outbox))).scalar() == 1
