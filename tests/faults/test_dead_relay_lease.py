"""Found by scenario 2 (push, kill -9): a dead relay's lease outlives the child's retry budget.

What happened in the random run: System A was killed while its relay held the lease on
an organization's outbox row.  The restarted process (a new relay owner) cannot take
that row until the lease expires (``relay.lease``, 30 s by default, not settable from
the services' environment), but it published a *user* of that organization at once —
another record, so per-record order does not hold it back.  System B retried the user
(organization not there yet: ``Retry``) with its backoff until ``max_deliver`` ran out,
well before the lease expired, and dead-lettered it as ``max_deliver_exceeded``.  The
organization arrived later; the user never did (until an operator replays it): the
databases diverge, against the guarantee "a child arriving before its parent is retried,
not dead-lettered" (README, "Guarantees and their limits").

This test builds that state deterministically — the organization's outbox row leased to
a relay that no longer exists (a ``live:`` owner whose liveness lock died with its
process), exactly what a relay killed after its claim leaves — and then creates the user
through the API.  Fixed by relay liveness (bridge.outbox._store.LIVE_PREFIX): a dead
owner's lease frees at once.  Expected: the user is applied on B once the
organization arrives.  It FAILS today whenever ``sum(backoff over max_deliver)`` is
shorter than the remaining lease (here FAST: 7 NAKs of 0.2+0.5+1+2+2+2+2 = 9.7 s < 30 s).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from fault_checker import read_stream
from fault_scenario import write_probe_result
from fault_stack import FAST, Deployment, in_process_side, new_database
from sqlalchemy import text

from bridge.testing import NatsServer, PostgresServer
from services.shared.schemas import OrganizationCreate

pytestmark = pytest.mark.faults

DEAD_LEASE = 30.0  # RelayOptions.lease default: what the services run with


async def test_user_of_an_organization_stuck_in_a_dead_relays_lease_is_not_dead_lettered(
    own_nats: NatsServer, postgres: PostgresServer, unique: str, results_dir: Path
) -> None:
    started = time.monotonic()
    stream = f"faults-{unique}"
    urls = (own_nats.url,)
    async with AsyncExitStack() as stack:
        db_a, db_b = await new_database(postgres, stack), await new_database(postgres, stack)
        a = await in_process_side(f"a{unique}", f"b{unique}", db_a, stream=stream, nats_urls=urls)
        deployment = Deployment(a, a, stream, urls)
        stack.push_async_callback(deployment.stop)
        b = await in_process_side(f"b{unique}", f"a{unique}", db_b, stream=stream, nats_urls=urls)
        deployment.b = b
        state_a = a.instances[0].app.state.service  # type: ignore[union-attr]
        client_a = a.instances[0].client
        client_b = b.instances[0].client

        # The organization commits with its outbox row already leased to a dead relay.
        async with state_a.session_factory() as session, session.begin():
            org = await state_a.repository.create_organization(
                session, OrganizationCreate(name="Leased Org", domain=f"l{unique}.test")
            )
            await session.flush()
            await session.execute(
                text(
                    "UPDATE bridge_outbox SET lease_owner = 'live:relay-killed-by-sigkill', "
                    "lease_expires_at = now() + make_interval(secs => :lease) "
                    "WHERE resource_id = :rid"
                ),
                {"lease": DEAD_LEASE, "rid": str(org.id)},
            )
        reply = await client_a.post(
            "/users",
            json={
                "organization_id": str(org.id),
                "name": "child",
                "email": f"c{unique}@example.com",
            },
        )
        assert reply.status_code == 201, reply.text
        user_id = reply.json()["id"]

        # Either the user arrives on B (the promise) or it is dead-lettered (the bug).
        deadline = time.monotonic() + DEAD_LEASE + 20
        outcome = None
        while time.monotonic() < deadline and outcome is None:
            if (await client_b.get(f"/users/{user_id}")).status_code == 200:
                outcome = "applied"
            else:
                status = (await client_b.get("/sync_status")).json()
                if status["dead_lettered_events_count"]:
                    outcome = f"dead-lettered on B: {status['dead_letters']} dead letter(s)"
            await asyncio.sleep(0.25)
        problem = (
            f"user {user_id} of organization {org.id} (outbox row leased by a dead relay "
            f"for {DEAD_LEASE:.0f} s): {outcome or 'not applied in time'}"
        )
        letters = Counter(
            m.reason or "unknown"
            for m in await read_stream(urls, stream)
            if m.subject.endswith(".sync.dlq")
        )
        write_probe_result(
            results_dir,
            scenario="dead_relay_lease_vs_retry_budget",
            title="Parent's outbox row stuck in a dead relay's lease; child retried on B",
            topology="2 in-process services, 1 nats-server, local PostgreSQL",
            config={
                "relay_lease_left_by_dead_relay": f"{DEAD_LEASE:.0f}s",
                "backoff": list(FAST["backoff"]),
                "max_deliver": FAST["max_deliver"],
            },
            faults=[
                {"kind": "dead relay's lease", "target": "organization outbox row", "at": 0.0},
                {"kind": "child created", "target": "POST /users on A", "at": 0.0},
            ],
            violations=[] if outcome == "applied" else [problem],
            wall_seconds=time.monotonic() - started,
            dead_letters=dict(letters),
        )
        assert outcome == "applied", problem
