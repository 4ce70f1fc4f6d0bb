"""The desired JetStream topology of one side, derived from its config.

- :func:`stream_spec` and :func:`consumer_spec` derive the desired stream and
  durable consumer of one side from its :class:`~bridge.config.BridgeConfig`;
  :mod:`bridge.provisioning.provisioner` compares them with a server.
- The stream is created with ``discard: new`` (a field the bridge owns): a size
  limit (``stream_max_bytes``, or one an operator set) makes the server refuse new
  publishes — which the relay retries — instead of deleting the oldest messages,
  which could be events no consumer has applied yet (:mod:`bridge._config_rules`).
- The stream allows per-message TTL when ``dlq_retention`` is ``"never"`` (dead
  letters then outlive ``max_age``, :mod:`bridge.routing.letter`); a stream without it is
  drift, and apply turns it on (JetStream never turns it off again).

The consumer's ``max_deliver`` on the server is NOT ``config.max_deliver``: with
dead letters on it is unlimited (``-1``, :func:`server_max_deliver`).  The bridge
itself allows ``config.max_deliver`` handler attempts and dead-letters any later
delivery at once (the reserved delivery, :func:`bridge.routing.outcomes.decide_exhausted`),
so a last attempt that never finished (process killed) comes back once more and is
settled, in every mode and without extra permissions.  A consumer still carrying a
finite limit (created by an older version) is drift: ``verify`` names it and
``apply`` updates it in place.

Durations are float seconds everywhere and become nanoseconds only in
:meth:`StreamSpec.to_api` / :meth:`ConsumerSpec.to_api`.

JetStream sets a consumer's ``ack_wait`` to ``backoff[0]`` whenever ``backoff`` is
given, and applies ``backoff`` only to redeliveries after an ack timeout (a NAK
carries its own delay).  So the server-side schedule we send is
``max(ack_wait, b)`` for each configured step: the ack window is never shorter
than ``ack_wait`` and later ack-timeout redeliveries still back off.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bridge._support.durations import to_nanos
from bridge.config import BridgeConfig

PUSH_IDLE_HEARTBEAT = 5.0
#: A full stream refuses new messages; it never deletes stored ones (module doc).
DISCARD = "new"


@dataclass(frozen=True, slots=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    duplicate_window: float
    max_age: float
    max_bytes: int
    replicas: int
    storage: str = "file"
    #: Per-message TTL (``Nats-TTL``), needed to keep dead letters past ``max_age``
    #: (:mod:`bridge.routing.letter`); once on, JetStream cannot turn it off.
    allow_msg_ttl: bool = False

    def to_api(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "name": self.name,
            "subjects": list(self.subjects),
            "retention": "limits",
            "storage": self.storage,
            "discard": DISCARD,
            "num_replicas": self.replicas,
            "duplicate_window": to_nanos(self.duplicate_window),
            "max_age": to_nanos(self.max_age),
            "max_bytes": self.max_bytes,
            "max_msgs": -1,
            "max_consumers": -1,
            "allow_direct": True,
        }
        if self.allow_msg_ttl:  # only then: servers before 2.11 do not know the field
            config["allow_msg_ttl"] = True
        return config


@dataclass(frozen=True, slots=True)
class ConsumerSpec:
    stream: str
    durable: str
    filter_subject: str
    ack_wait: float
    max_deliver: int
    backoff: tuple[float, ...]
    mode: str = "pull"
    deliver_subject: str | None = None
    deliver_group: str | None = None
    max_ack_pending: int = 1000

    def to_api(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "durable_name": self.durable,
            "filter_subject": self.filter_subject,
            "ack_policy": "explicit",
            "deliver_policy": "all",
            "replay_policy": "instant",
            "ack_wait": to_nanos(self.ack_wait),
            "max_deliver": self.max_deliver,
            "backoff": [to_nanos(b) for b in self.backoff],
            "max_ack_pending": self.max_ack_pending,
        }
        if self.mode == "push":
            config["deliver_subject"] = self.deliver_subject
            config["deliver_group"] = self.deliver_group
            config["flow_control"] = True
            config["idle_heartbeat"] = to_nanos(PUSH_IDLE_HEARTBEAT)
        return config


#: ``max_deliver`` of a consumer the server redelivers to without limit.
UNLIMITED_DELIVERIES = -1


def server_max_deliver(config: BridgeConfig) -> int:
    """The consumer's ``max_deliver`` on the server (see module doc).

    Without dead letters (``use_dlq=False``) nothing could settle a reserved
    delivery, so the server keeps ``config.max_deliver`` and stops redelivering
    after it (the message stays in the stream).
    """
    return UNLIMITED_DELIVERIES if config.use_dlq else config.max_deliver


def server_backoff(ack_wait: float, backoff: Sequence[float]) -> tuple[float, ...]:
    """The ack-timeout redelivery schedule sent to the server (see module doc)."""
    return tuple(max(ack_wait, b) for b in backoff)


def stream_spec(config: BridgeConfig) -> StreamSpec:
    return StreamSpec(
        name=config.stream_name,
        subjects=config.subjects.stream_subjects(),
        duplicate_window=config.duplicate_window,
        max_age=config.stream_max_age,
        max_bytes=config.stream_max_bytes,
        replicas=config.stream_replicas,
        allow_msg_ttl=config.dlq_retention == "never",
    )


def consumer_spec(config: BridgeConfig) -> ConsumerSpec:
    push = config.consumer_mode == "push"
    return ConsumerSpec(
        stream=config.stream_name,
        durable=config.subjects.durable,
        filter_subject=config.subjects.consume,
        ack_wait=config.ack_wait,
        max_deliver=server_max_deliver(config),
        backoff=server_backoff(config.ack_wait, config.backoff),
        mode=config.consumer_mode,
        deliver_subject=config.deliver_subject if push else None,
        deliver_group=config.deliver_group if push else None,
    )
