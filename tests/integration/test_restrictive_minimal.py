"""The generated permission sets are minimal: with the full set an app's whole
workflow runs; removing any single entry breaks the step that needs it.

One real nats-server holds one user per variant (the full set, and the set minus
each entry, for pull and for push); all variants run concurrently.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import nats
import pytest
from nats.aio.msg import Msg

from bridge.config import BridgeConfig, Credentials
from bridge.envelope import Envelope
from bridge.errors import PublishError
from bridge.provisioning.permissions import AppPermissions, app_permissions
from bridge.provisioning.provisioner import Provisioner
from bridge.provisioning.specs import consumer_spec, stream_spec
from bridge.reconcile.reconciler import PeerRequests
from bridge.testing import NatsServer
from bridge.transport.connection import Connection
from bridge.transport.jsapi import JetStreamApi
from bridge.transport.publisher import Publisher

ADMIN = ("admin", "admin-pw")
PUSH_MESSAGES, PUSH_SIZE = 8, 256_000  # enough bytes for the server to ask for flow control


@dataclass(frozen=True)
class Variant:
    index: int
    mode: str
    removed: str | None  # the entry left out, None for the full set
    config: BridgeConfig
    permissions: AppPermissions


def variants(unique: str) -> list[Variant]:
    result: list[Variant] = []
    for mode in ("pull", "push"):
        base = BridgeConfig(app_name="x", destination_app="y", consumer_mode=mode)  # type: ignore[arg-type]
        full = app_permissions(base)
        for removed in (None, *full.publish, *full.subscribe):
            i = len(result)
            cfg = BridgeConfig(
                app_name=f"x{i}{unique}",
                destination_app=f"y{i}{unique}",
                stream_name=f"s{i}{unique}",
                consumer_mode=mode,  # type: ignore[arg-type]
                credentials=Credentials(user=f"u{i}", password=f"p{i}"),
            )
            perms = app_permissions(cfg)
            # The same entry, renamed for this variant's app and stream.
            drop = None if removed is None else _rename(removed, base, cfg)
            result.append(
                Variant(
                    i,
                    mode,
                    removed,
                    cfg,
                    AppPermissions(
                        cfg.app_name,
                        mode,
                        tuple(s for s in perms.publish if s != drop),
                        tuple(s for s in perms.subscribe if s != drop),
                    ),
                )
            )
    return result


def _rename(entry: str, base: BridgeConfig, cfg: BridgeConfig) -> str:
    return (
        entry.replace("_INBOX_x.", f"_INBOX_{cfg.app_name}.")
        .replace(base.stream_name, cfg.stream_name)
        .replace("x.bridge.", f"{cfg.app_name}.bridge.")
        .replace("x-reconcile", f"{cfg.app_name}-reconcile")
        .replace("y.bridge.", f"{cfg.destination_app}.bridge.")
        .replace("x-workers", f"{cfg.app_name}-workers")
        .replace("y.sync.x", f"{cfg.destination_app}.sync.{cfg.app_name}")
        .replace("x.sync.", f"{cfg.app_name}.sync.")
        .replace(".sync.y", f".sync.{cfg.destination_app}")
    )


def authorization(all_variants: list[Variant]) -> str:
    users = [f"{{ user: {json.dumps(ADMIN[0])}, password: {json.dumps(ADMIN[1])} }}"]
    for v in all_variants:
        users.append(
            f'{{ user: "u{v.index}", password: "p{v.index}", permissions: {{'
            f" publish: {_rule(v.permissions.publish)},"
            f" subscribe: {_rule(v.permissions.subscribe)} }} }}"
        )
    return "authorization { users = [\n" + "\n".join(users) + "\n] }\n"


def _rule(allowed: tuple[str, ...]) -> str:
    # An empty allow list means "no restriction" to nats-server: deny all instead.
    return f"{{ allow: {json.dumps(list(allowed))} }}" if allowed else '{ deny: [">"] }'


def envelope(producer: str) -> Envelope:
    return Envelope(
        event_type="organization.created",
        producer=producer,
        resource_type="organization",
        resource_id="1",
        payload={},
    )


async def exercise(v: Variant, admin: nats.NATS, url: str) -> set[str]:
    """Run the app's workflow; return the names of the steps that failed."""
    cfg, failed = v.config.with_(nats_urls=(url,)), set[str]()
    admin_js = admin.jetstream()
    await Provisioner(JetStreamApi(admin)).apply(stream_spec(cfg), [consumer_spec(cfg)])
    conn = Connection(cfg)
    await conn.start(timeout=5)
    try:
        publisher = Publisher(conn.js, stream=cfg.stream_name, timeout=1)
        for step, subject in (("publish", cfg.subjects.publish), ("dead_letter", cfg.subjects.dlq)):
            try:
                await publisher.publish(subject, envelope(cfg.app_name))
            except PublishError:
                failed.add(step)
        if v.mode == "pull":
            await admin_js.publish(cfg.subjects.consume, b"work")
            try:
                sub = await conn.js.pull_subscribe_bind(
                    cfg.subjects.durable, stream=cfg.stream_name
                )
                msgs = await sub.fetch(1, timeout=1)
                await msgs[0].ack()
            except Exception:
                failed.add("receive")
            expected = 1
        else:
            for _ in range(PUSH_MESSAGES):
                await admin_js.publish(cfg.subjects.consume, b"x" * PUSH_SIZE)
            received: list[Msg] = []

            async def on_message(msg: Msg) -> None:
                if (msg.headers or {}).get("Status") == "100":
                    if msg.reply:
                        await conn.nc.publish(msg.reply, b"")  # flow control answer
                elif msg.reply:
                    received.append(msg)
                    await msg.ack()

            await conn.nc.subscribe(cfg.deliver_subject, queue=cfg.deliver_group, cb=on_message)
            expected = PUSH_MESSAGES
        deadline = time.monotonic() + 3
        info = await admin_js.consumer_info(cfg.stream_name, cfg.subjects.durable)
        while time.monotonic() < deadline:
            info = await admin_js.consumer_info(cfg.stream_name, cfg.subjects.durable)
            if info.ack_floor.stream_seq and info.num_ack_pending == 0 and info.num_pending == 0:
                break
            await asyncio.sleep(0.05)
        await conn.nc.flush()
        errors = " ".join(conn.permission_errors).lower()
        if info.delivered.consumer_seq == 0 or "subscription to" in errors:
            failed.add("receive")
        if '"$js.ack.' in errors or (info.delivered.consumer_seq and info.num_ack_pending):
            failed.add("ack")
        if '"$js.fc.' in errors:
            failed.add("flow_control")
        if v.mode == "push" and not failed and info.ack_floor.consumer_seq < expected:
            failed.add("receive")
        failed |= await reconcile_steps(v, admin, conn)
    finally:
        await conn.stop(timeout=2)
    return failed


async def reconcile_steps(v: Variant, admin: nats.NATS, conn: Connection) -> set[str]:
    """Reconciliation both ways, the admin client playing the peer: the app answers a
    request on its reconcile subject (in its queue group, replying under the peer's
    reply prefix) and sends one to the peer's (reply under its own prefix)."""
    failed: set[str] = set()
    subjects = v.config.subjects

    async def answer(msg: Msg) -> None:
        await conn.nc.publish(msg.reply, b"pong")

    async def peer(msg: Msg) -> None:
        await admin.publish(msg.reply, b"pong")

    await conn.nc.subscribe(subjects.reconcile, queue=subjects.reconcile_group, cb=answer)
    peer_sub = await admin.subscribe(subjects.peer_reconcile, cb=peer)
    replies = await admin.subscribe(f"{subjects.peer_reconcile_replies}.probe")
    await admin.flush()
    try:
        await conn.nc.flush()
        await admin.publish(
            subjects.reconcile, b"ping", reply=f"{subjects.peer_reconcile_replies}.probe"
        )
        answer_msg = await replies.next_msg(timeout=1)
        if answer_msg.data != b"pong":  # e.g. a 503 status: no responder subscribed
            failed.add("respond")
    except Exception:
        failed.add("respond")
    requests = PeerRequests(conn.nc, v.config)
    try:
        await requests.start()
        await requests.request(b"ping", timeout=1)
    except Exception:  # ReconcileError or a permissions violation
        failed.add("request")
    finally:
        await requests.stop()
        await peer_sub.unsubscribe()
        await replies.unsubscribe()
    return failed


EXPECTED = {
    "{app}.sync.{dest}": "publish",
    "{app}.sync.dlq": "dead_letter",
    "$JS.API.CONSUMER.MSG.NEXT.": "receive",
    "$JS.ACK.": "ack",
    "$JS.FC.": "flow_control",
    "_INBOX_{app}.>": "publish",  # no PubAck without the app's own reply inbox
    "{dest}.sync.{app}.worker": "receive",
    "{app}.bridge.reconcile": "respond",  # also its .reply.> (request)
    "{dest}.bridge.reconcile": "request",  # also its .reply.> (respond)
}


def expected_failure(entry: str) -> str:
    if ".bridge.reconcile.reply." in entry:  # replies: own → request, peer's → respond
        return "request" if entry.startswith("x.") else "respond"
    for pattern, step in EXPECTED.items():
        if entry.startswith(pattern.format(app="x", dest="y")):
            return step
    raise AssertionError(f"no expectation for {entry}")


async def test_each_permission_is_needed_and_the_set_is_enough(unique: str) -> None:
    all_variants = variants(unique)
    # pull: 6 publish + 3 subscribe; push: 6 + 4 (plus each full set)
    assert len(all_variants) == 1 + 9 + 1 + 10
    with NatsServer(config=authorization(all_variants)) as server:
        admin = await nats.connect(server.url, user=ADMIN[0], password=ADMIN[1])
        try:
            outcomes = await asyncio.gather(*(exercise(v, admin, server.url) for v in all_variants))
        finally:
            await admin.close()
    report = {(v.mode, v.removed): failed for v, failed in zip(all_variants, outcomes, strict=True)}
    for (mode, removed), failed in report.items():
        if removed is None:
            assert failed == set(), f"{mode} with the full set failed: {failed}"
        else:
            step = expected_failure(removed)
            assert step in failed, (
                f"{mode} without {removed!r}: expected {step} to fail, got {failed}"
            )


@pytest.mark.parametrize("mode", ["pull", "push"])
def test_no_management_subject_in_any_set(mode: str) -> None:
    perms = app_permissions(BridgeConfig(app_name="x", destination_app="y", consumer_mode=mode))  # type: ignore[arg-type]
    granted = perms.publish + perms.subscribe
    assert not any(s.startswith(("$JS.API.STREAM", "$JS.API.CONSUMER.CREATE")) for s in granted)
    assert not any(s in (">", "$JS.>", "$JS.API.>") for s in granted)
