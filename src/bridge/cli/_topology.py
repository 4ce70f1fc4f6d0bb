"""Plan / apply / verify a JetStream topology and say what was found — the one
implementation behind ``bridge provision`` (this app's stream and consumer) and
``bridge-provision`` (the stream and both apps' consumers, with admin credentials).

Each command prints one line per change or problem for people, or with ``--json`` one
document: ``command``, the changes (``kind``, ``target``, per field ``actual`` and
``desired``), and the ``desired`` topology.  ``plan`` is read-only; ``apply`` creates
and updates (:class:`~bridge.provisioning.provisioner.Provisioner`) and fails when the
server still differs afterwards; ``verify`` is read-only and fails naming every
missing or drifted item.  Exit codes: :data:`bridge.cli._context.EXIT_OK` or
:data:`~bridge.cli._context.EXIT_FAILED`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TextIO

from bridge.cli._options import EXIT_FAILED, EXIT_OK
from bridge.provisioning.provisioner import Change, Plan, Provisioner
from bridge.provisioning.specs import ConsumerSpec, StreamSpec
from bridge.transport.jsapi import JetStreamApi

COMMANDS = ("plan", "apply", "verify")


async def run_topology_command(
    command: str,
    api: JetStreamApi,
    stream: StreamSpec,
    consumers: Sequence[ConsumerSpec],
    out: TextIO,
    *,
    as_json: bool,
) -> int:
    """Run ``plan``, ``apply`` or ``verify`` for ``stream`` and ``consumers`` (module doc)."""
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}")
    provisioner = Provisioner(api)
    applied = await provisioner.apply(stream, consumers) if command == "apply" else None
    plan = await provisioner.plan(stream, consumers)  # after apply: what still differs
    fields: dict[str, Any]
    if applied is not None:
        fields = {"applied": _changes(applied), "remaining": _changes(plan)}
        text = "applied:\n" + applied.describe() if not applied.empty else applied.describe()
        if not plan.empty:
            text += "\nstill differs after apply:\n" + plan.describe()
    elif command == "plan":
        fields = {"in_sync": plan.empty, "changes": _changes(plan)}
        text = plan.describe()
    else:
        problems = [{**change_to_json(c), "message": describe_problem(c)} for c in plan.changes]
        fields = {"ok": plan.empty, "problems": problems}
        names = ", ".join(f"{c.stream}/{c.durable} ({c.mode})" for c in consumers)
        text = "\n".join(p["message"] for p in problems) or (
            f"OK: stream {stream.name} and consumers {names} match"
        )
    payload = {"command": command, **fields, "desired": summary(stream, consumers)}
    out.write((json.dumps(payload, indent=2, sort_keys=True) if as_json else text) + "\n")
    return EXIT_OK if command == "plan" or plan.empty else EXIT_FAILED


def _changes(plan: Plan) -> list[dict[str, Any]]:
    return [change_to_json(c) for c in plan.changes]


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def change_to_json(change: Change) -> dict[str, Any]:
    return {
        "kind": change.kind,
        "target": change.target,
        "fields": {
            name: {"actual": _jsonable(actual), "desired": _jsonable(desired)}
            for name, (actual, desired) in sorted(change.fields.items())
        },
    }


def describe_problem(change: Change) -> str:
    """One human line per verify problem, naming the drifted fields."""
    if change.kind == "create_stream":
        return f"MISSING stream {change.target}"
    if change.kind == "create_consumer":
        return f"MISSING consumer {change.target}"
    what = "stream" if change.kind == "update_stream" else "consumer"
    fields = ", ".join(
        f"{name}: {actual!r} (want {desired!r})"
        for name, (actual, desired) in sorted(change.fields.items())
    )
    return f"DRIFT {what} {change.target}: {fields}"


def summary(stream: StreamSpec, consumers: Sequence[ConsumerSpec]) -> dict[str, Any]:
    """The desired topology, as the JSON output shows it."""
    return {
        "stream": stream.name,
        "subjects": list(stream.subjects),
        "consumers": [
            {"name": f"{c.stream}/{c.durable}", "mode": c.mode, "filter_subject": c.filter_subject}
            for c in consumers
        ],
    }
