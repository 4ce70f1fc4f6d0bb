"""Plan / apply / verify the desired topology (:mod:`bridge.provisioning.specs`)
against a server.

- :meth:`Provisioner.plan` diffs the desired specs against the server (read-only).
- :meth:`Provisioner.apply` creates what is missing and updates only the fields
  the bridge owns; fields an operator set (limits, replicas, description,
  ``max_ack_pending``, extra stream subjects ...) are kept.  Applying twice is a
  no-op the second time.  A pull↔push switch recreates the consumer (the server
  cannot change a consumer's type in place) starting after the old consumer's ack
  floor (``deliver_policy: by_start_sequence``): acked messages are not delivered
  again, un-acked ones are not lost (messages acked above the floor come again and
  the inbox absorbs them).  Only if ``apply`` dies between the delete and the create
  does the next ``apply`` create the consumer afresh, from the start of the stream.
- :meth:`Provisioner.verify` is read-only and raises a
  :class:`~bridge.errors.ProvisioningError` subclass naming what is missing or drifted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from bridge._support.durations import to_nanos
from bridge.errors import DriftError, MissingConsumerError, MissingStreamError, ProvisioningError
from bridge.provisioning.specs import DISCARD, ConsumerSpec, StreamSpec
from bridge.transport.jsapi import JetStreamApi

ChangeKind = Literal[
    "create_stream", "update_stream", "create_consumer", "update_consumer", "recreate_consumer"
]


@dataclass(frozen=True, slots=True)
class Change:
    kind: ChangeKind
    target: str
    fields: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    def describe(self) -> str:
        if not self.fields:
            return f"{self.kind} {self.target}"
        diffs = ", ".join(f"{k}: {a!r} -> {d!r}" for k, (a, d) in sorted(self.fields.items()))
        return f"{self.kind} {self.target} ({diffs})"


@dataclass(frozen=True, slots=True)
class Plan:
    changes: tuple[Change, ...]

    @property
    def empty(self) -> bool:
        return not self.changes

    def describe(self) -> str:
        if self.empty:
            return "no changes: stream and consumers match the desired state"
        return "\n".join(c.describe() for c in self.changes)


def _seconds(nanos: Any) -> float:
    return float(nanos or 0) / 1_000_000_000


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)


def stream_drift(spec: StreamSpec, actual: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Fields the bridge owns that differ (missing subjects, duplicate window, storage)."""
    drift: dict[str, tuple[Any, Any]] = {}
    have = list(actual.get("subjects") or [])
    missing = [s for s in spec.subjects if s not in have]
    if missing:
        drift["subjects"] = (have, have + missing)
    if not _close(_seconds(actual.get("duplicate_window")), spec.duplicate_window):
        drift["duplicate_window"] = (
            _seconds(actual.get("duplicate_window")),
            spec.duplicate_window,
        )
    if actual.get("storage") != spec.storage:
        drift["storage"] = (actual.get("storage"), spec.storage)
    if spec.allow_msg_ttl and not actual.get("allow_msg_ttl"):
        drift["allow_msg_ttl"] = (bool(actual.get("allow_msg_ttl")), True)
    if actual.get("discard") != DISCARD:
        drift["discard"] = (actual.get("discard"), DISCARD)
    return drift


def consumer_drift(spec: ConsumerSpec, actual: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Fields the bridge owns that differ on the server."""
    drift: dict[str, tuple[Any, Any]] = {}
    actual_mode = "push" if actual.get("deliver_subject") else "pull"
    if actual_mode != spec.mode:
        drift["mode"] = (actual_mode, spec.mode)
    if actual.get("filter_subject") != spec.filter_subject:
        drift["filter_subject"] = (actual.get("filter_subject"), spec.filter_subject)
    if actual.get("ack_policy") != "explicit":
        drift["ack_policy"] = (actual.get("ack_policy"), "explicit")
    if int(actual.get("max_deliver", 0)) != spec.max_deliver:
        drift["max_deliver"] = (actual.get("max_deliver"), spec.max_deliver)
    if not _close(_seconds(actual.get("ack_wait")), spec.ack_wait):
        drift["ack_wait"] = (_seconds(actual.get("ack_wait")), spec.ack_wait)
    have_backoff = tuple(_seconds(b) for b in actual.get("backoff") or [])
    if len(have_backoff) != len(spec.backoff) or not all(
        _close(a, b) for a, b in zip(have_backoff, spec.backoff, strict=False)
    ):
        drift["backoff"] = (have_backoff, spec.backoff)
    if spec.mode == "push":
        if actual.get("deliver_subject") != spec.deliver_subject:
            drift["deliver_subject"] = (actual.get("deliver_subject"), spec.deliver_subject)
        if actual.get("deliver_group") != spec.deliver_group:
            drift["deliver_group"] = (actual.get("deliver_group"), spec.deliver_group)
    return drift


class Provisioner:
    """Plan, apply and verify one stream and any number of durable consumers."""

    def __init__(self, api: JetStreamApi) -> None:
        self._api = api

    async def plan(self, stream: StreamSpec, consumers: Sequence[ConsumerSpec] = ()) -> Plan:
        changes: list[Change] = []
        stream_exists = True
        try:
            info = await self._api.stream_info(stream.name)
        except MissingStreamError:
            stream_exists = False
            changes.append(Change("create_stream", stream.name))
        else:
            drift = stream_drift(stream, info["config"])
            if drift:
                changes.append(Change("update_stream", stream.name, drift))
        for spec in consumers:
            target = f"{spec.stream}/{spec.durable}"
            if not stream_exists:
                changes.append(Change("create_consumer", target))
                continue
            try:
                cinfo = await self._api.consumer_info(spec.stream, spec.durable)
            except MissingConsumerError:
                changes.append(Change("create_consumer", target))
                continue
            drift = consumer_drift(spec, cinfo["config"])
            if "mode" in drift or "deliver_subject" in drift or "deliver_group" in drift:
                changes.append(Change("recreate_consumer", target, drift))
            elif drift:
                changes.append(Change("update_consumer", target, drift))
        return Plan(tuple(changes))

    async def _stream_exists(self, name: str) -> bool:
        try:
            await self._api.stream_info(name)
        except MissingStreamError:
            return False
        return True

    async def apply(
        self, stream: StreamSpec, consumers: Sequence[ConsumerSpec] = (), *, _replan: bool = True
    ) -> Plan:
        """Bring the server to the desired state; return the plan that was applied.

        Safe to run from several processes at once (both apps of a pair start
        together): a stream created by someone else between this plan and this create
        makes the create fail, so the plan is made again, once, against what exists.
        """
        plan = await self.plan(stream, consumers)
        by_target = {spec.stream + "/" + spec.durable: spec for spec in consumers}
        for change in plan.changes:
            if change.kind == "create_stream":
                try:
                    await self._api.save_stream(stream.to_api(), create=True)
                except ProvisioningError:
                    # The peer lists the same subjects in its own order, so JetStream
                    # answers "already in use with a different configuration".
                    if not _replan or not await self._stream_exists(stream.name):
                        raise
                    return await self.apply(stream, consumers, _replan=False)
            elif change.kind == "update_stream":
                current = (await self._api.stream_info(stream.name))["config"]
                merged = dict(current)  # keep every operator-set field
                merged["subjects"] = change.fields.get("subjects", (None, current["subjects"]))[1]
                merged["duplicate_window"] = to_nanos(stream.duplicate_window)
                merged["allow_msg_ttl"] = bool(current.get("allow_msg_ttl")) or stream.allow_msg_ttl
                merged["discard"] = DISCARD
                await self._api.save_stream(merged, create=False)
            else:
                spec = by_target[change.target]
                if change.kind == "create_consumer":
                    await self._api.save_consumer(spec.stream, spec.to_api(), action="create")
                elif change.kind == "recreate_consumer":
                    await self._recreate(spec)
                else:
                    current = (await self._api.consumer_info(spec.stream, spec.durable))["config"]
                    merged = dict(current)
                    owned = spec.to_api()
                    for key in (
                        "filter_subject",
                        "ack_policy",
                        "ack_wait",
                        "max_deliver",
                        "backoff",
                    ):
                        merged[key] = owned[key]
                    await self._api.save_consumer(spec.stream, merged, action="update")
        return plan

    async def _recreate(self, spec: ConsumerSpec) -> None:
        """Delete and create ``spec``'s consumer, starting after the old one's ack floor."""
        info = await self._api.consumer_info(spec.stream, spec.durable)
        floor = int((info.get("ack_floor") or {}).get("stream_seq") or 0)
        config = spec.to_api()
        if floor:
            config["deliver_policy"] = "by_start_sequence"
            config["opt_start_seq"] = floor + 1
        await self._api.delete_consumer(spec.stream, spec.durable)
        await self._api.save_consumer(spec.stream, config, action="create")

    async def verify(self, stream: StreamSpec, consumers: Sequence[ConsumerSpec] = ()) -> None:
        """Raise if anything is missing or drifted; change nothing."""
        plan = await self.plan(stream, consumers)
        for change in plan.changes:
            if change.kind == "create_stream":
                raise MissingStreamError(
                    f"stream {stream.name!r} does not exist; run the provisioner "
                    "(bridge-provision apply) or enable auto_provision"
                )
        problems = []
        for change in plan.changes:
            if change.kind == "create_consumer":
                raise MissingConsumerError(
                    f"consumer {change.target!r} does not exist; run the provisioner "
                    "(bridge-provision apply) or enable auto_provision"
                )
            problems.append(change.describe())
        if problems:
            raise DriftError("JetStream topology drifted: " + "; ".join(problems))
