"""Dead letters in restrictive mode, on a real nats-server with the generated users: the
app's own permission set is enough to store letters kept past the stream's max_age,
and what the app may not read is reported as absent, never as an error."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import create_async_engine
from test_restrictive import EnvFactory, envs, wait_for  # noqa: F401 - shared fixture

from bridge import schema
from bridge.envelope import Envelope
from bridge.provisioning.permissions import app_permissions
from bridge.provisioning.provisioner import Provisioner
from bridge.provisioning.specs import consumer_spec, stream_spec
from bridge.routing.dlq import DeadLetters
from bridge.runtime import Bridge
from bridge.transport.delivery import StoredMessage
from bridge.transport.jsapi import JetStreamApi
from bridge.transport.publisher import Publisher


def event(producer: str) -> Envelope:
    return Envelope(
        event_type="organization.created",
        producer=producer,
        resource_type="organization",
        resource_id="1",
        payload={},
    )


async def test_an_app_user_stores_dead_letters_that_outlive_the_streams_max_age(
    envs: EnvFactory,  # noqa: F811
) -> None:
    env = await envs()
    cfg = env.cfg(env.a)
    assert not cfg.auto_provision  # restrictive: the app user only publishes and consumes
    # The app's set is unchanged: publishing on its DLQ subject is all a dead letter needs.
    assert cfg.subjects.dlq in app_permissions(cfg).publish
    short = cfg.with_(stream_max_age=2.0, duplicate_window=1.0)
    await Provisioner(JetStreamApi(env.admin)).apply(stream_spec(short), [consumer_spec(short)])
    admin_js = env.admin.jetstream()
    original = event(env.b)
    ack = await admin_js.publish(
        cfg.subjects.consume, original.to_bytes(), headers=original.headers()
    )

    conn = await env.connect(env.a)
    app_letters = DeadLetters(cfg, conn.js, Publisher(conn.js, stream=cfg.stream_name))
    message = StoredMessage(
        original.to_bytes(), original.headers(), cfg.subjects.consume, cfg.stream_name, ack.seq, 1
    )
    await app_letters.publish(message, reason="rejected", error=ValueError("no"))
    await conn.nc.flush()
    assert not conn.permission_errors

    async def original_expired() -> bool:
        info = await admin_js.stream_info(cfg.stream_name, subjects_filter=cfg.subjects.consume)
        return not (info.state.subjects or {}).get(cfg.subjects.consume)

    await wait_for(original_expired, timeout=15)
    operator = DeadLetters(cfg, admin_js, Publisher(admin_js, stream=cfg.stream_name))
    [letter] = await operator.list()
    assert letter.original_seq == ack.seq and letter.headers["Nats-TTL"] == "never"
    assert letter.envelope().event_id == original.event_id


async def test_the_app_reports_no_dead_letter_age_it_may_not_read(
    envs: EnvFactory,  # noqa: F811
    database_url: str,
) -> None:
    env = await envs()
    await env.provision(env.a, env.b)
    engine = create_async_engine(database_url)
    await schema.create_all(engine)
    bridge = Bridge(env.cfg(env.a), engine=engine, dispose_engine=True)
    async with bridge:
        status = await bridge.status()
        assert status["dead_letters"] is None
        assert status["dead_letters_oldest_age_seconds"] is None
        exposition = (await bridge.metrics.render()).decode()
    names = {family.name for family in text_string_to_metric_families(exposition)}
    assert "bridge_jetstream_connected" in names
    assert not {"bridge_dead_letters", "bridge_dead_letters_oldest_age_seconds"} & names
