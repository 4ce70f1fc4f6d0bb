"""deploy/: the Prometheus alert rules and the Grafana dashboard, checked against a real run.

promtool checks the rule file and the example Prometheus config.  Then System A and
System B run in this process against their own nats-server and the real PostgreSQL
and are driven through four states, each scraped from ``/metrics`` (System B over
real HTTP on a worker's operations endpoint, as Prometheus would):

- **healthy**: events flow both ways;
- **down**: System B's metrics endpoint is gone (``up`` 0);
- **outage**: NATS stopped, System B's database refusing connections;
- **faults**: on A the relay stopped with a pending row, a row JetStream rejected, a
  natural-key conflict, a reconciliation repair and a failed pass; on B a consumer
  task killed once (below), a malformed message, an unknown schema version, a
  30-minute-old event, a refused reconciliation request, and its consumer stopped
  behind 1001 messages.

Each state, after the healthy one, becomes a ``promtool test rules`` case
(:mod:`monitoring_support` turns the scrapes into input series) that says exactly
which alerts fire, with which labels and annotations, and the healthy state one in
which none does: every alert of deploy/prometheus/alerts.yml fires somewhere.  The
dashboard's expressions must parse and read only metrics this run produced.

Every sample is one the services produced: nothing is synthesized.  The one fault
injected from outside the services' code is the task death: B's router gets a handler
(for an event type the services do not use, registered only here) that raises a
``BaseException`` on its first call, as a library bug or an exotic exception would;
the consumer's supervision restarts the worker and the redelivery is applied.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
import pytest
import yaml
from e2e_support import FAST, Side, eventually, new_id, start_side
from monitoring_support import (
    ALERTS,
    BASELINE,
    DASHBOARD,
    PROMETHEUS_CONFIG,
    ROOT,
    Target,
    as_promql,
    dashboard_expressions,
    expected_alert,
    input_series,
    load_alerts,
    metric_names,
    parse_exposition,
    promtool,
    segment,
)
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from bridge.config import RelayOptions
from bridge.envelope import Envelope, format_timestamp, utcnow
from bridge.testing import NatsServer, PostgresServer, database_name, to_plain_url
from services.shared.operations_server import OperationsServer, operations_app

A, B = "system_a", "system_b"
#: Minutes after the state began at which each alert is evaluated in the faults case:
#: after its ``for`` (and an age threshold) has passed, inside its range window.
EVAL_AFTER = {
    "BridgeOutboxOldestPendingRow": 12, "BridgeOutboxFailedRows": 3,
    "BridgeRelayNotRunning": 7, "BridgeConsumerLag": 12, "BridgeConsumerStalled": 25,
    "BridgeEndToEndLagHigh": 7, "BridgeDeadLettersGrowing": 2, "BridgeDeadLetterUnhandled": 70,
    "BridgeUnsupportedSchemaVersions": 2, "BridgeConflicts": 2, "BridgeConsumerRestarting": 2,
    "BridgeReconcileRepairs": 2, "BridgeReconcileFailing": 2,
    "BridgeReconcileRequestsRefused": 2, "BridgeNatsDisconnected": 7,
    "BridgeStateUnreadable": 7, "BridgeTargetDown": 7,
}  # fmt: skip
#: Which alerts fire for which labels in each state (apps unless the rule groups by more).
FIRING: dict[str, dict[str, list[dict[str, str]]]] = {
    "down": {"BridgeTargetDown": [{"app": B, "instance": "b"}]},
    "outage": {
        "BridgeNatsDisconnected": [{"app": A, "instance": "a"}],
        "BridgeStateUnreadable": [
            {"app": B, "instance": "b", "source": "bridge"},
            {"app": B, "instance": "b", "source": "sync_tables"},
        ],
    },
    "faults": {
        "BridgeOutboxOldestPendingRow": [{"app": A}],
        "BridgeOutboxFailedRows": [{"app": A}],
        "BridgeRelayNotRunning": [{"app": A}],
        "BridgeConsumerLag": [{"app": B}],
        "BridgeConsumerStalled": [{"app": B}],
        "BridgeEndToEndLagHigh": [{"app": B}],
        "BridgeDeadLettersGrowing": [{"app": A}, {"app": B}],
        "BridgeDeadLetterUnhandled": [{"app": A}, {"app": B}],
        "BridgeUnsupportedSchemaVersions": [{"app": B}],
        "BridgeConflicts": [{"app": A}],
        "BridgeConsumerRestarting": [{"app": B}],
        "BridgeReconcileRepairs": [{"app": A}],
        "BridgeReconcileFailing": [{"app": A}],
        "BridgeReconcileRequestsRefused": [{"app": B}],
    },
}
LAG_SECONDS = 30 * 60
BACKLOG = 1001
RESTARTS = "bridge_consumer_task_restarts_total"
OLDEST_LETTER = "bridge_dead_letters_oldest_age_seconds"


def value(target: Target, name: str, **labels: str) -> float | None:
    key = (name, tuple(sorted(labels.items())))
    return (target.samples or {}).get(key)


def sources_up(target: Target) -> bool:
    """Every metric source of the target was read (``bridge_metrics_source_up`` all 1)."""
    ups = [v for (n, _), v in (target.samples or {}).items() if n == "bridge_metrics_source_up"]
    return bool(ups) and min(ups) == 1


def total(target: Target, name: str, **labels: str) -> float:
    return sum(
        v
        for (n, lab), v in (target.samples or {}).items()
        if n == name and all(dict(lab).get(k) == w for k, w in labels.items())
    )


@dataclass
class Run:
    phases: dict[str, list[Target]]  # the scraped targets of each phase


class Killer(BaseException):
    """Ends the consumer task that runs the handler raising it (fault injection)."""


class Scraper:
    """A in process (ASGI), B over HTTP on a worker's operations endpoint."""

    def __init__(self, a: Side, b: Side, http: httpx.AsyncClient) -> None:
        self.a, self.b, self.http = a, b, http
        self.server: OperationsServer | None = None
        self.port = 0

    async def serve_b(self) -> None:
        app = operations_app(self.b.state, self.b.app.state.metrics)
        self.server = OperationsServer(app, host="127.0.0.1", port=self.port)
        await self.server.start()
        self.port = self.server.port or 0

    async def stop_b(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            await server.stop(5.0)

    async def scrape(self) -> list[Target]:
        for side in (self.a, self.b):
            await side.app.state.metrics.refresh(force=True)  # no 1 s cache between states
        a_text = (await self.a.client.get("/metrics")).text
        try:
            response = await self.http.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5)
            b_samples: dict[Any, float] | None = parse_exposition(response.text)
        except httpx.TransportError:
            b_samples = None
        now = time.time()
        return [
            Target(A, "a", parse_exposition(a_text), now),
            Target(B, "b", b_samples, now),
        ]

    async def until(self, check: Callable[[Target, Target], bool], what: str) -> list[Target]:
        async def probe() -> list[Target] | None:
            targets = await self.scrape()
            return targets if check(*targets) else None

        return await eventually(probe, timeout=40.0, interval=0.2, what=what)


async def allow_connections(url: str, allowed: bool) -> None:
    """Open or close a database to new connections (closing also ends the open ones)."""
    conn = await asyncpg.connect(to_plain_url(url).rsplit("/", 1)[0] + "/postgres")
    try:
        name = database_name(url)
        await conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS {str(allowed).lower()}')
        if not allowed:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
            )
    finally:
        await conn.close()


async def organization_payload(side: Side, *, domain: str) -> dict[str, Any]:
    """A valid organization payload (the services' current version), new id and domain."""
    row = json.loads(json.dumps((await side.rows("organizations"))[0], default=str))
    now = format_timestamp(utcnow())
    return {**row, "id": new_id(), "domain": domain, "name": f"Org {domain}",
            "origin": side.name, "deleted_at": None, "created_at": now,
            "updated_at": now}  # fmt: skip


@pytest.fixture(scope="module")
async def run(postgres: PostgresServer) -> AsyncIterator[Run]:
    unique = uuid.uuid4().hex[:8]
    a_name, b_name, stream = f"a{unique}", f"b{unique}", f"mon-{unique}"
    phases: dict[str, list[Target]] = {}
    async with AsyncExitStack() as stack:
        server = NatsServer().start()
        stack.callback(server.cleanup)
        relay = RelayOptions(poll_interval=0.1, lease=5.0, retry_base=0.05, retry_max=0.1,
                             max_attempts=3)  # fmt: skip
        a = await start_side(stack, postgres, name=a_name, peer=b_name, stream=stream,
                             nats_url=server.url, relay=relay)  # fmt: skip
        b = await start_side(stack, postgres, name=b_name, peer=a_name, stream=stream,
                             nats_url=server.url, **FAST)  # fmt: skip
        http = await stack.enter_async_context(httpx.AsyncClient())
        scraper = Scraper(a, b, http)
        await scraper.serve_b()
        stack.push_async_callback(scraper.stop_b)

        # -- healthy: one organization each way -------------------------------------------
        for side, peer, domain in ((a, b, "one.test"), (b, a, "two.test")):
            created = await side.client.post(
                "/organizations", json={"name": domain, "domain": domain}
            )
            org = created.json()

            async def arrived(peer: Side = peer, org_id: int = org["id"]) -> bool:
                return (await peer.get(f"/organizations/{org_id}")).status_code == 200

            await eventually(arrived, what=f"{domain} synced")
        phases["healthy"] = await scraper.until(
            lambda ta, tb: (
                total(tb, "bridge_deliveries_total", outcome="acked") >= 1
                and total(ta, "bridge_deliveries_total", outcome="acked") >= 1
            ),
            "healthy metrics",
        )

        # -- down: B's metrics endpoint is gone --------------------------------------------
        await scraper.stop_b()
        phases["down"] = await scraper.until(lambda ta, tb: tb.samples is None, "B down")
        await scraper.serve_b()

        # -- outage: NATS stopped, B's database closed ---------------------------------------
        server.stop()
        await allow_connections(b.database_url, False)
        try:
            phases["outage"] = await scraper.until(
                lambda ta, tb: (
                    value(ta, "bridge_jetstream_connected") == 0
                    and value(tb, "bridge_metrics_source_up", source="bridge") == 0
                    and value(tb, "bridge_metrics_source_up", source="sync_tables") == 0
                ),
                "NATS down for A, B's database unreadable",
            )
        finally:
            await allow_connections(b.database_url, True)
            server.start()
        # The consumer's counters are read without I/O: still there with the database down.
        assert value(phases["outage"][1], RESTARTS) == 0, phases["outage"][1].names()
        await scraper.until(
            lambda ta, tb: (
                value(ta, "bridge_jetstream_connected") == 1
                and value(tb, "bridge_jetstream_connected") == 1
                and sources_up(ta)
                and sources_up(tb)
            ),
            "recovered",
        )

        # -- faults ----------------------------------------------------------------------------
        nc = await nats.connect(server.url)
        stack.push_async_callback(nc.close)
        js = nc.jetstream()
        bridge_a, bridge_b = a.state.bridge, b.state.bridge
        assert bridge_a is not None and bridge_b is not None
        subject = a.config.subjects.publish
        # B: a consumer task dies — the handler raises a BaseException on its first call,
        # as a library bug would — and is restarted; the redelivery is applied.
        canary_calls = 0

        async def canary(session: AsyncSession, envelope: Envelope) -> None:
            nonlocal canary_calls
            canary_calls += 1
            if canary_calls == 1:
                raise Killer("B's worker killed by the first canary delivery")

        bridge_b.router.on("canary.created", canary)
        killing = Envelope(event_type="canary.created", producer=a_name, origin=a_name,
                           resource_type="canary", resource_id=unique, payload={})  # fmt: skip
        await js.publish(subject, killing.to_bytes(), headers=killing.headers())
        await scraper.until(
            lambda ta, tb: canary_calls == 2 and value(tb, RESTARTS) == 1,
            "a consumer task of B died, was restarted, and the redelivery applied",
        )
        # A: a hand edit behind the bridge, repaired by a reconciliation pass ...
        async with a.state.engine.begin() as conn:  # with capture off: drift, not a change
            await conn.execute(text("SET LOCAL bridge.capture = 'off'"))
            await conn.execute(text("UPDATE organizations SET name = name || ' (hand edit)'"))
        report = await bridge_a.reconciler().run()
        assert report.repaired_to_peer >= 1, report
        # ... B's responder refuses a malformed request, then is gone: A's next pass fails.
        reply = await nc.request(b.config.subjects.reconcile, b"{not json", timeout=5)
        assert b'"ok": false' in reply.data or b'"ok":false' in reply.data
        assert bridge_b.reconcile_responder is not None
        await bridge_b.reconcile_responder.stop(5.0)
        with pytest.raises(Exception):
            await bridge_a.reconciler().run()
        # B: a malformed message, an unknown version, and an event 30 minutes old in the
        # gem's v1 (upcast to v2 on the way in).
        await js.publish(subject, b"not an envelope", headers={"Nats-Msg-Id": uuid.uuid4().hex})
        for version, domain, age in ((99, "future.test", 0), (1, "late.test", LAG_SECONDS)):
            payload = await organization_payload(a, domain=domain)
            if version == 1:
                payload = {k: v for k, v in payload.items() if k not in ("origin", "deleted_at")}
            envelope = Envelope(
                event_type="organization.created", producer=a_name, origin=a_name,
                resource_type="organization", resource_id=str(payload["id"]), payload=payload,
                schema_version=version,
                occurred_at=format_timestamp(utcnow() - timedelta(seconds=age)),
            )  # fmt: skip
            await js.publish(subject, envelope.to_bytes(), headers=envelope.headers())
        late_id = payload["id"]

        async def late_applied() -> bool:
            return (await b.get(f"/organizations/{late_id}")).status_code == 200

        await eventually(late_applied, what="the late event applied on B")
        # A: a row JetStream rejects (its subject belongs to another stream): failed.
        await js.add_stream(name=f"other-{unique}", subjects=[f"elsewhere.{unique}"])
        async with bridge_a.session_factory.begin() as session:
            rejected = Envelope(event_type="organization.created", producer=a_name,
                                resource_type="organization", resource_id=str(new_id()),
                                payload={})  # fmt: skip
            await bridge_a.outbox.enqueue(session, rejected, subject=f"elsewhere.{unique}")
        await scraper.until(lambda ta, tb: value(ta, "bridge_outbox_failed") == 1, "failed row")
        # A: the relay stops; a change waits in its outbox, and B's change of the same
        # natural key arrives: a conflict, dead-lettered on A.
        assert bridge_a.relay is not None
        await bridge_a.relay.stop(5.0)
        for side in (a, b):
            response = await side.client.post(
                "/organizations", json={"name": f"clash {side.name}", "domain": "clash.test"}
            )
            assert response.status_code == 201, response.text
        # B: its consumer stops, and a backlog builds up behind it.
        await scraper.until(lambda ta, tb: value(ta, "bridge_conflicts_total") == 1, "conflict")
        assert bridge_b.consumer is not None
        await bridge_b.consumer.stop(5.0)
        for n in range(BACKLOG):
            await nc.publish(subject, b"{}", headers={"Nats-Msg-Id": f"backlog-{unique}-{n}"})
        await nc.flush()
        phases["faults"] = await scraper.until(
            lambda ta, tb: (
                value(ta, "bridge_relay_running") == 0
                and (value(ta, "bridge_outbox_pending") or 0) >= 1
                and value(ta, "bridge_reconcile_runs_total", result="error") == 1
                and (value(tb, "bridge_deliveries_total", outcome="dead_lettered") or 0) >= 2
                and total(tb, "bridge_unsupported_schema_versions_total") == 1
                and value(tb, "bridge_reconcile_requests_total", result="bad_request") == 1
                and (value(tb, "bridge_consumer_pending") or 0) >= BACKLOG
                and value(ta, RESTARTS) == 0
                and value(tb, RESTARTS) == 1
                and (value(ta, OLDEST_LETTER) or 0) > 0
                and (value(tb, OLDEST_LETTER) or 0) > 0
            ),
            "every fault visible",
        )
    yield Run(phases)


def test_samples_become_series_the_way_prometheus_would_have_recorded_them() -> None:
    def seg(name: str, value: float | None) -> str:
        return segment(name, value, samples=3, start_minute=10, wall_time=1_000_000.0)

    assert seg("bridge_outbox_pending", 4) == "4.0x2"  # held through the phase
    assert seg("bridge_outbox_oldest_pending_age_seconds", 5) == "5.0+60x2"  # still waiting
    assert seg("bridge_outbox_oldest_pending_age_seconds", 0) == "0.0x2"  # nothing waits
    assert seg("bridge_reconcile_last_run_timestamp_seconds", 999_990) == "590.0x2"  # 10 s ago
    assert seg("bridge_relay_running", None) == "_x2"  # absent: the source failed
    assert seg("bridge_relay_batch_duration_seconds_bucket", float("inf")) == "+Infx2"


def test_rules_and_config_pass_promtool_checks() -> None:
    rules = promtool("check", "rules", str(ALERTS))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    config = promtool("check", "config", PROMETHEUS_CONFIG.name, cwd=PROMETHEUS_CONFIG.parent)
    assert config.returncode == 0, config.stdout + config.stderr
    headings = re.findall(r"^#+ (.+)$", (ROOT / "docs" / "OPERATIONS.md").read_text(), re.M)
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in headings}
    for rule in load_alerts():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]
        page, _, anchor = rule["annotations"]["runbook"].partition("#")
        assert page == "docs/OPERATIONS.md" and anchor in anchors, rule["alert"]


def alert_tests(rules: list[dict[str, Any]], case: str) -> list[dict[str, Any]]:
    """promtool ``alert_rule_test`` entries of one case: every alert, fired or not."""
    entries = []
    for rule in rules:
        name = rule["alert"]
        firing = FIRING.get(case, {}).get(name, [])
        minutes = [BASELINE + EVAL_AFTER[name]] if case != "healthy" else [5, 30, 60, 99]
        for minute in minutes:
            entries.append({
                "eval_time": f"{minute}m", "alertname": name,
                "exp_alerts": [expected_alert(rule, labels) for labels in firing],
            })  # fmt: skip
    return entries


def test_every_alert_fires_on_the_metrics_of_the_run_and_only_there(
    run: Run, tmp_path: Path
) -> None:
    rules = load_alerts()
    cases = [("healthy", "healthy"), ("down", "down"), ("outage", "outage"), ("faults", "faults")]
    document = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "name": case,
                "interval": "1m",
                "input_series": input_series(run.phases["healthy"], run.phases[phase]),
                "alert_rule_test": alert_tests(rules, case),
            }
            for case, phase in cases
        ],
    }
    test_file = tmp_path / "alerts_test.yml"
    test_file.write_text(yaml.safe_dump(document, sort_keys=False, width=1000))
    result = promtool("test", "rules", str(test_file))
    assert result.returncode == 0, f"{test_file}\n{result.stdout}\n{result.stderr}"
    fired = {name for case in FIRING.values() for name, labels in case.items() if labels}
    assert fired == {rule["alert"] for rule in rules}, "every alert must fire in some state"


def test_dashboard_parses_and_reads_only_produced_metrics(run: Run, tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "app", "instance"} <= variables
    expressions = dashboard_expressions(dashboard)
    assert len(expressions) >= 20
    rules_file = tmp_path / "dashboard_rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:panel_{i}", "expr": as_promql(expr)}
        for i, (_, expr) in enumerate(expressions)
    ]}]}))  # fmt: skip
    check = promtool("check", "rules", str(rules_file))
    assert check.returncode == 0, check.stdout + check.stderr
    produced = {name for targets in run.phases.values() for t in targets for name in t.names()}
    produced.add("up")  # recorded by Prometheus for every scrape (input_series does too)
    named = {(title, name) for title, expr in expressions for name in metric_names(expr)}
    assert not {n for _, n in named} - produced, sorted(named - {(t, n) for t, n in named
                                                                  if n in produced})  # fmt: skip
    for rule in load_alerts():
        assert metric_names(rule["expr"]) <= produced, rule["alert"]
    # Every metric of the run's services is on the dashboard, except the bookkeeping ones.
    suffix = re.compile(r"_(bucket|count|sum|total|created)$")
    families = {suffix.sub("", n) for n in produced}
    shown = {suffix.sub("", n) for _, n in named}
    assert not families - shown - {"bridge_reconcile_bytes"}, sorted(families - shown)
