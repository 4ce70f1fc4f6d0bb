"""The one workload every contender runs: the same events, bodies, stream and checks.

- An event is an ``organization.updated`` :class:`~bridge.envelope.Envelope` whose
  payload is a realistic row snapshot of about ``PAYLOAD_BYTES`` (300) bytes of JSON;
  on the wire the envelope adds its metadata (event id, producer, timestamps).  The
  raw baselines and the peers publish exactly these envelope bodies with
  ``Nats-Msg-Id`` = event id, so every contender moves the same bytes.
- The stream is the bridge's own stream spec (file storage, 120 s duplicate window),
  one fresh stream per run.
- :func:`stored_ids` reads back what a run left on the stream, by ``Nats-Msg-Id``, so
  lost and duplicated events are counted the same way for everyone
  (:func:`benchmarks.stats.check_delivery`).
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections import Counter

from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from bridge.config import BridgeConfig
from bridge.envelope import MSG_ID_HEADER, Envelope
from bridge.provisioning.provisioner import Provisioner
from bridge.provisioning.specs import stream_spec
from bridge.transport.jsapi import JetStreamApi

PAYLOAD_BYTES = 300
#: how many interleaved runs each ratio is the median of (``BENCH_RUNS``, default 3)
DEFAULT_RUNS = 3


def runs() -> int:
    value = int(os.environ.get("BENCH_RUNS", str(DEFAULT_RUNS)))
    if value < 1:
        raise ValueError(f"BENCH_RUNS must be >= 1, got {value}")
    return value


class DeliveryError(AssertionError):
    """A benchmark run of the bridge lost or duplicated an event: the run is void."""


def payload(i: int, org_id: str | None = None) -> dict[str, object]:
    """A row snapshot of ``PAYLOAD_BYTES`` bytes of compact JSON (padded by ``notes``)."""
    org_id = org_id or str(uuid.uuid4())
    body: dict[str, object] = {
        "id": org_id,
        "name": f"Organization {i:07d}",
        "domain": f"org{i:07d}.bench.example",
        "active": True,
        "plan": "business",
        "country": "DE",
        "created_at": "2026-01-01T00:00:00.000000Z",
        "updated_at": "2026-01-01T00:00:00.000000Z",
        "origin": "system_a",
        "deleted_at": None,
        "notes": "",
    }
    missing = PAYLOAD_BYTES - len(json.dumps(body, separators=(",", ":")))
    body["notes"] = "x" * max(0, missing)
    return body


def envelope(cfg: BridgeConfig, i: int) -> Envelope:
    org_id = str(uuid.uuid4())
    return Envelope(
        event_type="organization.updated",
        producer=cfg.app_name,
        resource_type="organization",
        resource_id=org_id,
        payload=payload(i, org_id),
    )


def messages(cfg: BridgeConfig, n: int) -> list[tuple[str, bytes]]:
    """``n`` (event id, envelope body) pairs, ready to publish."""
    return [(e.event_id, e.to_bytes()) for e in (envelope(cfg, i) for i in range(n))]


def bench_config(nats_url: str, label: str, **overrides: object) -> BridgeConfig:
    """A config with names of its own (stream, subjects), so runs never share a stream."""
    tag = uuid.uuid4().hex[:8]
    return BridgeConfig(
        app_name=f"{label}{tag}",
        destination_app=f"peer{tag}",
        stream_name=f"bench-{label}-{tag}",
        nats_urls=(nats_url,),
        **overrides,  # type: ignore[arg-type]
    )


async def create_stream(nc: Client, cfg: BridgeConfig) -> None:
    await Provisioner(JetStreamApi(nc)).apply(stream_spec(cfg), [])


async def delete_stream(nc: Client, cfg: BridgeConfig) -> None:
    with contextlib.suppress(Exception):
        await JetStreamApi(nc).delete_stream(cfg.stream_name)


async def stored_count(nc: Client, stream: str) -> int:
    info = await nc.jetstream().stream_info(stream)
    return int(info.state.messages)


async def stored_ids(nc: Client, stream: str, subject: str, *, batch: int = 1000) -> Counter[str]:
    """How many messages the stream holds on ``subject`` per ``Nats-Msg-Id``.

    The stream's duplicate window drops a republished id inside 120 s, so a count above
    1 means a copy went past it (e.g. a relay that lost track and published under a new
    id would show as an *unexpected* id instead).
    """
    js = nc.jetstream()
    total = await stored_count(nc, stream)
    name = f"check{uuid.uuid4().hex[:8]}"
    sub = await js.pull_subscribe(
        subject,
        durable=name,
        stream=stream,
        config=ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.ALL,
            max_ack_pending=-1,
        ),
    )
    counts: Counter[str] = Counter()
    try:
        seen = 0
        while seen < total:
            try:
                msgs = await sub.fetch(batch, timeout=2.0)
            except TimeoutError:
                break
            for msg in msgs:
                counts[(msg.headers or {}).get(MSG_ID_HEADER, "")] += 1
            seen += len(msgs)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await js.delete_consumer(stream, name)
    return counts
