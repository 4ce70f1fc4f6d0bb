"""The only place subject, durable and deliver names are built.

Wire contract (compatible with the Ruby gem's topology): app ``A`` publishes on
``{A}.sync.{B}``, consumes ``{B}.sync.{A}`` with durable ``{A}-workers``, and dead
letters go to ``{A}.sync.dlq``.  Push consumers deliver on ``{B}.sync.{A}.worker``
to queue group ``{A}-workers``.  Reconciliation requests (core NATS, not the
stream) go to ``{A}.bridge.reconcile``, answered by queue group ``{A}-reconcile``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bridge.errors import ConfigError

_FORBIDDEN = re.compile(r"[.*>\s]")


#: Longest app, stream or group name: an envelope's ``producer`` must fit the peer's
#: inbox column (128) with room to spare, and so must the subjects built from it.
MAX_TOKEN_LENGTH = 64


def validate_token(value: str, *, name: str) -> str:
    """Return ``value`` if it is a single, safe subject token; else raise ConfigError."""
    if not value:
        raise ConfigError(f"{name} must not be empty")
    if len(value) > MAX_TOKEN_LENGTH:
        raise ConfigError(
            f"{name} is {len(value)} characters long; at most {MAX_TOKEN_LENGTH}: names travel "
            "in every envelope (producer, origin) and the peer's inbox stores them"
        )
    if _FORBIDDEN.search(value):
        raise ConfigError(
            f"{name}={value!r} is not a valid NATS name token: it must not contain "
            "'.', '*', '>' or whitespace"
        )
    return value


@dataclass(frozen=True, slots=True)
class Subjects:
    """Names for one side (``app``) of a pair with ``destination``."""

    app: str
    destination: str

    def __post_init__(self) -> None:
        validate_token(self.app, name="app_name")
        validate_token(self.destination, name="destination_app")
        if self.app == self.destination:
            raise ConfigError("app_name and destination_app must differ")

    @property
    def publish(self) -> str:
        """Subject this app publishes its changes on."""
        return f"{self.app}.sync.{self.destination}"

    @property
    def consume(self) -> str:
        """Subject this app consumes (the destination's publish subject)."""
        return f"{self.destination}.sync.{self.app}"

    @property
    def dlq(self) -> str:
        """This app's dead-letter subject."""
        return f"{self.app}.sync.dlq"

    @property
    def peer_dlq(self) -> str:
        """The destination's dead-letter subject (the stream holds both)."""
        return f"{self.destination}.sync.dlq"

    @property
    def durable(self) -> str:
        """Durable consumer name of this app."""
        return f"{self.app}-workers"

    @property
    def deliver_subject(self) -> str:
        """Default push deliver subject of this app's consumer."""
        return f"{self.consume}.worker"

    @property
    def deliver_group(self) -> str:
        """Default push queue group of this app's consumer."""
        return self.durable

    @property
    def reconcile(self) -> str:
        """Core NATS subject this app answers reconciliation requests on (never in the
        stream: it lists literal ``.sync.`` subjects only)."""
        return f"{self.app}.bridge.reconcile"

    @property
    def peer_reconcile(self) -> str:
        """The destination's reconciliation subject (this app's requests go there)."""
        return f"{self.destination}.bridge.reconcile"

    @property
    def reconcile_replies(self) -> str:
        """Prefix of the reply subjects of this app's reconciliation requests: the peer
        may publish only there (``.>``), not into this app's general reply inbox."""
        return f"{self.app}.bridge.reconcile.reply"

    @property
    def peer_reconcile_replies(self) -> str:
        """Where this app's responder answers the destination's requests."""
        return f"{self.destination}.bridge.reconcile.reply"

    @property
    def reconcile_group(self) -> str:
        """Queue group of this app's reconciliation responders (instances share requests)."""
        return f"{self.app}-reconcile"

    def stream_subjects(self) -> tuple[str, ...]:
        """Literal subjects of both directions and both DLQs.

        nats-server 2.15 rejects a wildcard like ``*.sync.*`` as overlapping the
        JetStream API, so the stream lists literal subjects.
        """
        return (self.publish, self.consume, self.dlq, self.peer_dlq)
