"""verify_runtime_access / check_permissions with least-privilege users on a real
nats-server: they pass when everything is there, fail fast naming what is missing,
and never store, consume or ack anything."""

from __future__ import annotations

import asyncio
import time

import pytest
from test_restrictive import EnvFactory, envs  # noqa: F401 - shared fixture

from bridge.errors import (
    DriftError,
    MissingConsumerError,
    MissingStreamError,
    PermissionDeniedError,
)
from bridge.provisioning.access import check_permissions, verify_runtime_access
from bridge.provisioning.provisioner import Provisioner
from bridge.provisioning.specs import consumer_spec, stream_spec
from bridge.transport.jsapi import JetStreamApi


async def test_verify_passes_for_pull_and_push_and_changes_nothing(envs: EnvFactory) -> None:  # noqa: F811
    env = await envs({"a": "pull", "b": "push"})
    await env.provision(env.a, env.b)
    cfg_a, cfg_b = env.cfg(env.a), env.cfg(env.b)
    js = env.admin.jetstream()
    await js.publish(cfg_b.subjects.publish, b"waiting for a")  # pending on A's durable
    a = await env.connect(env.a)
    b = await env.connect(env.b)
    started = time.monotonic()
    await verify_runtime_access(a, cfg_a, timeout=5)
    assert time.monotonic() - started < 5  # every probe answered: no request timed out
    await verify_runtime_access(b, cfg_b, timeout=5)
    info = await js.consumer_info(cfg_a.stream_name, cfg_a.subjects.durable)
    assert info.num_pending == 1 and info.delivered.consumer_seq == 0
    assert info.num_ack_pending == 0 and info.num_redelivered == 0
    stream = await js.stream_info(cfg_a.stream_name)
    assert stream.state.messages == 1  # the publish probes stored nothing
    assert not a.permission_errors and not b.permission_errors


async def test_push_probe_hands_a_delivery_straight_back(envs: EnvFactory) -> None:  # noqa: F811
    env = await envs({"a": "pull", "b": "push"})
    await env.provision(env.a, env.b)
    cfg_a, cfg_b = env.cfg(env.a), env.cfg(env.b)
    js = env.admin.jetstream()
    await js.publish(cfg_a.subjects.publish, b"for b")
    b = await env.connect(env.b)
    await verify_runtime_access(b, cfg_b, timeout=2)
    # NAKed with a short delay: a real member of the group gets it next.
    got: asyncio.Queue[int] = asyncio.Queue()

    async def on_message(msg):  # type: ignore[no-untyped-def]
        if msg.reply and not msg.headers:
            await got.put(msg.metadata.num_delivered)
            await msg.ack()

    await b.nc.subscribe(cfg_b.deliver_subject, queue=cfg_b.deliver_group, cb=on_message)
    assert await asyncio.wait_for(got.get(), 5) == 2


async def test_missing_pull_consumer_fails_within_seconds_naming_it(envs: EnvFactory) -> None:  # noqa: F811
    env = await envs({"a": "pull", "b": "pull"})
    await env.provision(env.b)  # the stream and B's consumer, not A's
    cfg_a = env.cfg(env.a)
    a = await env.connect(env.a)
    started = time.monotonic()
    with pytest.raises(MissingConsumerError, match=cfg_a.subjects.durable) as err:
        await verify_runtime_access(a, cfg_a, timeout=2)
    assert time.monotonic() - started < 5
    assert cfg_a.stream_name in str(err.value) and "bridge-provision apply" in str(err.value)


async def test_missing_push_consumer_fails_naming_it(envs: EnvFactory) -> None:  # noqa: F811
    env = await envs({"a": "pull", "b": "push"})
    await env.provision(env.a)
    cfg_b = env.cfg(env.b)
    b = await env.connect(env.b)
    with pytest.raises(MissingConsumerError, match=cfg_b.subjects.durable) as err:
        await verify_runtime_access(b, cfg_b, timeout=2, heartbeat_wait=1.5)
    assert cfg_b.deliver_subject in str(err.value)


async def test_missing_stream_fails_naming_it(envs: EnvFactory) -> None:  # noqa: F811
    env = await envs({"a": "pull", "b": "pull"})
    cfg_a = env.cfg(env.a)
    a = await env.connect(env.a)
    with pytest.raises(MissingStreamError, match=cfg_a.stream_name):
        await verify_runtime_access(a, cfg_a, timeout=2)


async def test_consumer_in_the_other_mode_is_drift(envs: EnvFactory) -> None:  # noqa: F811
    env = await envs({"a": "pull", "b": "pull"})
    cfg_a = env.cfg(env.a)
    push_a = cfg_a.with_(consumer_mode="push")
    await Provisioner(JetStreamApi(env.admin)).apply(stream_spec(cfg_a), [consumer_spec(push_a)])
    a = await env.connect(env.a)
    with pytest.raises(DriftError, match="push-based"):
        await verify_runtime_access(a, cfg_a, timeout=2)


async def test_wrong_permissions_fail_fast_naming_the_subject(envs: EnvFactory) -> None:  # noqa: F811
    env = await envs({"a": "pull", "b": "pull"})
    await env.provision(env.a, env.b)
    cfg_a = env.cfg(env.a)
    # A's configuration, but B's NATS user: A's subjects are not B's to use.
    wrong = cfg_a.with_(credentials=env.stack.apps[env.b].credentials())
    conn = await env.connect(env.a, wrong)
    started = time.monotonic()
    with pytest.raises(PermissionDeniedError, match=cfg_a.subjects.publish):
        await verify_runtime_access(conn, wrong, timeout=10)
    # Coarse: reported on the violation, not after the 10 s request timeout.
    assert time.monotonic() - started < 5


async def test_check_permissions_reports_each_needed_subject(envs: EnvFactory) -> None:  # noqa: F811
    env = await envs({"a": "pull", "b": "push"})
    await env.provision(env.a, env.b)
    for app in (env.a, env.b):
        conn = await env.connect(app)
        checks = await check_permissions(conn.nc, env.cfg(app), timeout=1)
        assert checks and all(c.allowed for c in checks), checks
        assert {c.operation for c in checks} == {"publish", "subscribe"}
    cfg_a = env.cfg(env.a)
    wrong = cfg_a.with_(credentials=env.stack.apps[env.b].credentials())
    conn = await env.connect(env.a, wrong)
    by_subject = {c.subject: c for c in await check_permissions(conn.nc, wrong, timeout=1)}
    assert not by_subject[cfg_a.subjects.publish].allowed
    assert not by_subject[cfg_a.subjects.dlq].allowed
    assert not by_subject[f"$JS.ACK.{cfg_a.stream_name}.{cfg_a.subjects.durable}.>"].allowed
    assert by_subject[f"{wrong.inbox_prefix}.>"].allowed  # B's user, B's own inbox


async def test_check_permissions_verdicts_are_the_same_in_50_runs(envs: EnvFactory) -> None:  # noqa: F811
    """The verdict is the server's, not the outcome of a race with its -ERR: every
    run of the check, for the app's own user and for a user lacking A's subjects,
    reports exactly the same allowed/denied per subject."""
    env = await envs({"a": "pull", "b": "push"})
    await env.provision(env.a, env.b)
    cfg_a = env.cfg(env.a)
    own = await env.connect(env.a)
    wrong_cfg = cfg_a.with_(credentials=env.stack.apps[env.b].credentials())
    wrong = await env.connect(env.a, wrong_cfg)
    denied = {
        cfg_a.subjects.publish,
        cfg_a.subjects.dlq,
        f"$JS.API.CONSUMER.MSG.NEXT.{cfg_a.stream_name}.{cfg_a.subjects.durable}",
        f"$JS.ACK.{cfg_a.stream_name}.{cfg_a.subjects.durable}.>",
        cfg_a.subjects.peer_reconcile,
        f"{cfg_a.subjects.peer_reconcile_replies}.>",
        f"{cfg_a.subjects.reconcile} {cfg_a.subjects.reconcile_group}",
        f"{cfg_a.subjects.reconcile_replies}.>",
    }
    for run in range(50):
        checks = await check_permissions(own.nc, cfg_a, timeout=5)
        assert [c for c in checks if not c.allowed] == [], f"run {run}"
        by_subject = {c.subject: c.allowed for c in await check_permissions(
            wrong.nc, wrong_cfg, timeout=5)}  # fmt: skip
        assert {s for s, allowed in by_subject.items() if not allowed} == denied, f"run {run}"
