"""GET /metrics of System A and System B running in this process (real NATS + PostgreSQL).

A known sequence of events, then the exposition of each service is parsed with
``prometheus_client.parser`` and counter VALUES are checked: A's relay published
exactly what was created, B acked exactly that, nothing leaked between the two
registries (both apps live in one process).
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import nats
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.config import RelayOptions
from bridge.envelope import Envelope
from bridge.testing import NatsServer, PostgresServer
from services.shared.schemas import OrganizationCreate

_E2E = str(Path(__file__).resolve().parents[1] / "e2e")
if _E2E not in sys.path:  # the in-process service harness of the e2e tests
    sys.path.insert(0, _E2E)
from e2e_support import Side, eventually, start_pair, start_side  # noqa: E402

OUTCOMES = ("acked", "duplicate", "retried", "dead_lettered")


class Scrape:
    """One parsed exposition: sample values by (name, labels) and family types."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: list[tuple[str, dict[str, str], float]] = []
        self.types: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for sample in family.samples:
                self.samples.append((sample.name, dict(sample.labels), sample.value))

    def value(self, name: str, **labels: str) -> float | None:
        """The one sample ``name`` with exactly ``labels`` (None if absent)."""
        found = [v for n, lab, v in self.samples if n == name and lab == labels]
        assert len(found) <= 1, (name, labels, found)
        return found[0] if found else None

    def total(self, name: str, **labels: str) -> float:
        """Sum of the samples ``name`` whose labels include ``labels``."""
        return sum(
            v
            for n, lab, v in self.samples
            if n == name and all(lab.get(k) == w for k, w in labels.items())
        )

    def deliveries(self) -> dict[str, float | None]:
        return {o: self.value("bridge_deliveries_total", outcome=o) for o in OUTCOMES}


async def scrape(side: Side) -> Scrape:
    response = await side.client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return Scrape(response.text)


async def scrape_until(side: Side, check: Any, what: str, timeout: float = 20.0) -> Scrape:
    async def probe() -> Scrape | None:
        result = await scrape(side)
        return result if check(result) else None

    return await eventually(probe, timeout=timeout, what=f"{what} on {side.name}")


@pytest.fixture
async def sides(
    nats_server: NatsServer, postgres: PostgresServer, unique: str
) -> AsyncIterator[tuple[Side, Side]]:
    stream = f"metrics-{unique}"
    async with AsyncExitStack() as stack:
        yield await start_pair(
            stack, postgres, unique=unique, stream=stream, nats_url=nats_server.url
        )


async def test_three_creates_in_a_are_counted_on_both_sides(sides: tuple[Side, Side]) -> None:
    a, b = sides
    before = await scrape(a)
    assert before.value("bridge_events_published_total") == 0
    assert before.deliveries() == dict.fromkeys(OUTCOMES, 0.0)  # every outcome series exists

    for i in range(3):
        response = await a.client.post(
            "/organizations", json={"name": f"Org {i}", "domain": f"m{i}.test"}
        )
        assert response.status_code == 201, response.text

    after_b = await scrape_until(
        b,
        lambda s: (
            s.value("bridge_deliveries_total", outcome="acked") == 3
            and s.value("bridge_inbox_records", status="processed") == 3
        ),
        "3 deliveries acked",
    )
    after_a = await scrape_until(
        a,
        lambda s: (
            s.value("bridge_events_published_total") == 3 and s.value("bridge_outbox_pending") == 0
        ),
        "3 events published",
    )

    # A: the producer side.
    assert after_a.value("bridge_publish_failures_total") == 0
    assert after_a.value("bridge_publish_duplicates_total") == 0
    batches = after_a.value("bridge_relay_batch_duration_seconds_count")
    assert batches is not None and 1 <= batches <= 3
    assert after_a.value("bridge_outbox_retrying") == 0
    assert after_a.value("bridge_outbox_failed") == 0
    assert after_a.value("bridge_outbox_oldest_pending_age_seconds") == 0
    assert after_a.deliveries() == dict.fromkeys(OUTCOMES, 0.0)  # B echoes nothing back
    assert after_a.value("bridge_jetstream_connected") == 1

    # B: the consumer side, its own registry (nothing published there).
    assert after_b.deliveries() == {"acked": 3, "duplicate": 0, "retried": 0, "dead_lettered": 0}
    assert after_b.value("bridge_events_published_total") == 0
    handled = after_b.value(
        "bridge_handler_duration_seconds_count",
        event_type="organization.created",
        result="success",
    )
    assert handled == 3
    assert after_b.total("bridge_handler_duration_seconds_count", result="error") == 0
    assert after_b.value("bridge_end_to_end_lag_seconds_count") == 3
    lag_sum = after_b.value("bridge_end_to_end_lag_seconds_sum")
    assert lag_sum is not None and 0 < lag_sum < 60  # coarse: three syncs, not minutes
    assert after_b.value("bridge_inbox_records", status="failed") == 0
    assert after_b.value("bridge_inbox_records", status="dead_lettered") == 0
    assert after_b.value("bridge_conflicts_total") == 0
    assert after_b.value("bridge_dead_letters") == 0
    assert after_b.value("bridge_dead_letters_oldest_age_seconds") == 0

    types = after_b.types
    assert types["bridge_events_published"] == "counter"
    assert types["bridge_deliveries"] == "counter"
    assert types["bridge_conflicts"] == "counter"
    assert types["bridge_relay_batch_duration_seconds"] == "histogram"
    assert types["bridge_handler_duration_seconds"] == "histogram"
    assert types["bridge_end_to_end_lag_seconds"] == "histogram"
    assert types["bridge_outbox_pending"] == "gauge"
    assert types["bridge_inbox_records"] == "gauge"
    assert types["bridge_dead_letters"] == "gauge"
    assert types["bridge_dead_letters_oldest_age_seconds"] == "gauge"

    # Counters only grow: a later scrape after more traffic never reads lower.
    response = await a.client.post("/organizations", json={"name": "Org 3", "domain": "m3.test"})
    assert response.status_code == 201
    later = await scrape_until(
        b, lambda s: s.value("bridge_deliveries_total", outcome="acked") == 4, "4th delivery"
    )
    assert later.value("bridge_end_to_end_lag_seconds_count") == 4


async def create_conflicting_orgs(a: Side, b: Side, domain: str) -> None:
    """The same domain created on both sides, both transactions open before either commits."""
    async with AsyncExitStack() as stack:
        for side in (a, b):
            session = await stack.enter_async_context(side.state.session_factory())
            await stack.enter_async_context(session.begin())
            await side.state.repository.create_organization(
                session, OrganizationCreate(name=f"{side.name} {domain}", domain=domain)
            )


async def test_conflicts_dead_letters_and_retries_are_counted(
    sides: tuple[Side, Side], nats_server: NatsServer
) -> None:
    a, b = sides
    await create_conflicting_orgs(a, b, "clash.test")
    for side in (a, b):
        result = await scrape_until(
            side,
            lambda s: (
                s.value("bridge_conflicts_total") == 1 and s.value("bridge_dead_letters") == 1
            ),
            "one conflict, dead-lettered",
        )
        assert result.deliveries() == {
            "acked": 0, "duplicate": 0, "retried": 0, "dead_lettered": 1,
        }  # fmt: skip
        assert result.value("bridge_inbox_records", status="dead_lettered") == 1
        oldest = result.value("bridge_dead_letters_oldest_age_seconds")
        assert oldest is not None and 0 < oldest < 600  # the conflict's letter, unhandled
        assert result.total("bridge_handler_duration_seconds_count", result="error") >= 1
        assert result.value("bridge_end_to_end_lag_seconds_count") == 0  # none acked

    # A user arriving on B before its organization: retried, then acked.
    org = (await a.client.post("/organizations", json={"name": "P", "domain": "p.test"})).json()
    (org_row,) = [
        json.loads(json.dumps(row, default=str))
        for row in await a.rows("organizations")
        if row["id"] == org["id"]
    ]
    org_id, user_id = org["id"] + 8, org["id"] + 9  # systems 9, 10: no side issues them
    org_payload = {**org_row, "id": org_id, "domain": "p2.test", "updated_at": org["updated_at"],
                   "created_at": org["created_at"], "deleted_at": None}  # fmt: skip
    user_payload = {
        "id": user_id, "organization_id": org_id, "name": "U", "email": "u@p2.example.com",
        "role": "member", "active": True, "created_at": org["created_at"],
        "updated_at": org["updated_at"], "deleted_at": None, "origin": a.name,
    }  # fmt: skip
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()

        async def publish(resource: str, payload: dict[str, Any]) -> None:
            env = Envelope(
                event_type=f"{resource}.created", producer=a.name, resource_type=resource,
                resource_id=payload["id"], payload=payload,
            )  # fmt: skip
            await js.publish(a.config.subjects.publish, env.to_bytes(), headers=env.headers())

        await publish("user", user_payload)
        await scrape_until(
            b,
            lambda s: (s.value("bridge_deliveries_total", outcome="retried") or 0) >= 1,
            "a retry",
        )
        await publish("organization", org_payload)
    finally:
        await nc.close()
    result = await scrape_until(
        b,
        lambda s: s.value("bridge_deliveries_total", outcome="acked") == 3,  # P, P2, U
        "user applied after its organization",
    )
    assert result.value("bridge_deliveries_total", outcome="dead_lettered") == 1
    assert result.value("bridge_conflicts_total") == 1
    assert (await b.client.get(f"/users/{user_id}")).status_code == 200


async def test_publish_failures_and_failed_rows_are_counted(
    nats_server: NatsServer, postgres: PostgresServer, unique: str
) -> None:
    async with AsyncExitStack() as stack:
        a = await start_side(
            stack, postgres, name=f"a{unique}", peer=f"b{unique}", stream=f"pf-{unique}",
            nats_url=nats_server.url,
            relay=RelayOptions(poll_interval=0.1, retry_base=0.05, retry_max=0.1, max_attempts=3),
        )  # fmt: skip
        bridge = a.state.bridge
        assert bridge is not None
        envelope = Envelope(
            event_type="organization.created", producer=a.name, resource_type="organization",
            resource_id="42", payload={},
        )  # fmt: skip
        # This subject belongs to another stream: JetStream refuses every attempt (the
        # relay expects its own stream, a 400) — a rejection, so it counts to max_attempts.
        nc = await nats.connect(nats_server.url)
        stack.push_async_callback(nc.close)
        await nc.jetstream().add_stream(name=f"other-{unique}", subjects=[f"elsewhere.{unique}"])
        async with bridge.session_factory.begin() as session:
            await bridge.outbox.enqueue(session, envelope, subject=f"elsewhere.{unique}")
        result = await scrape_until(
            a, lambda s: s.value("bridge_outbox_failed") == 1, "the row failed"
        )
        assert result.value("bridge_publish_failures_total") == 3  # max_attempts
        assert result.value("bridge_events_published_total") == 0
        assert result.value("bridge_outbox_pending") == 0
        assert result.value("bridge_outbox_retrying") == 0
