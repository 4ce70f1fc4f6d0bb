"""Versioned events: each event type's payload model per schema version, and the
upcasters between consecutive versions, declared once.

(:mod:`bridge.schema` is the bridge's database tables; this module is about the
``schema_version`` field of the envelope.)

An application declares, per **resource type** (``"organization"``: every action,
since the payload is the row snapshot whatever the action) or per **exact event
type** (``"organization.deleted"``; exact wins, as in :class:`bridge.routing.router.Router`):

- :meth:`EventSchemas.version`: the payload validator of version *n* — any callable
  ``validate(payload) -> payload`` that raises ``ValueError``/``TypeError``/
  ``KeyError`` naming the field when the payload does not fit (a pydantic model's
  ``model_validate`` raises ``ValidationError``, a ``ValueError``).  What it returns
  is what the next step sees, so it may normalise; the bridge core has no pydantic.
- :meth:`EventSchemas.upcaster`: ``upcast(payload, envelope) -> payload`` turning a
  version *n* payload into a version *n+1* one.

A version may also carry its payload's **JSON Schema** (``json_schema=``, e.g. a pydantic
model's ``model_json_schema()``): documentation only — the validator decides what is
accepted — read by the event catalog (:mod:`bridge.catalog`) through
:meth:`EventSchemas.declarations`.  Keep it to what JSON Schema draft 7 and the AsyncAPI
Schema Object share (``$defs``/``$ref`` within the schema are fine).

The newest declared version is the type's **current** version; the oldest one is
the oldest the consumer accepts.  :meth:`EventSchemas.check` (called by
:meth:`bridge.runtime.Bridge.start`, before connecting) fails with
:class:`~bridge.errors.ConfigError` naming the type and the missing step when a
version between the two has no validator or a step has no upcaster.

Producer: the outbox stamps ``schema_version`` with :meth:`EventSchemas.current_version`
(1 for a type nobody declared: the wire contract's first version, docs/ARCHITECTURE.md),
or with the version pinned by :meth:`EventSchemas.publish_version` while consumers are
being upgraded.

Consumer (:meth:`EventSchemas.resolve`, run by the inbox once per delivery before
the handler):

- a type nobody declared is not versioned: the envelope goes to the handler as is;
- ``schema_version`` newer than the current version, or older than the oldest
  accepted → :class:`~bridge.errors.Reject` with reason
  ``unsupported_schema_version``: dead-lettered (original body kept) and termed,
  never retried in a loop.  After the consumer is upgraded to know that version,
  ``bridge dlq replay`` republishes the same body (new event id, same
  ``schema_version``) and it applies;
- otherwise the payload is validated with its own version's validator, upcast
  step by step to the current version and validated with the current validator;
  a payload that fails validation → ``Reject`` ``invalid_payload`` with the
  validator's message (which names the field).  The handler receives an envelope
  whose ``payload`` and ``schema_version`` are the current ones.

An upcaster that raises anything else is a bug, not bad input: the error goes to
:func:`bridge.routing.outcomes.decide` like a handler's (retried with backoff, dead-lettered
``max_deliver_exceeded`` on the last delivery).  Upcasters must be pure.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from bridge.envelope import SCHEMA_VERSION, Envelope
from bridge.errors import ConfigError, Reject
from bridge.routing.outcomes import REASON_INVALID_PAYLOAD, REASON_UNSUPPORTED_SCHEMA_VERSION

__all__ = [
    "DeclaredType",
    "EventSchemas",
    "PayloadValidator",
    "SchemaObserver",
    "Upcaster",
]

#: Validates one version's payload; returns the payload the next step sees.
PayloadValidator = Callable[[Mapping[str, Any]], Mapping[str, Any]]
#: Turns a version *n* payload into a version *n + 1* payload (pure).
Upcaster = Callable[[Mapping[str, Any], Envelope], Mapping[str, Any]]

_INVALID = (ValueError, TypeError, KeyError)


class SchemaObserver(Protocol):
    """Told about upcasts and unsupported versions (implemented by BridgeMetrics)."""

    def event_upcast(self, event_type: str, from_version: int) -> None: ...

    def event_unsupported(self, event_type: str, version: int) -> None: ...


@dataclass(slots=True)
class _Chain:
    """The versions of one declared type."""

    validators: dict[int, PayloadValidator] = field(default_factory=dict)
    upcasters: dict[int, Upcaster] = field(default_factory=dict)
    json_schemas: dict[int, dict[str, Any]] = field(default_factory=dict)
    publish: int | None = None  # the version producers stamp, when pinned below current

    @property
    def current(self) -> int:
        return max(self.validators)

    @property
    def oldest(self) -> int:
        return min(self.validators)


@dataclass(frozen=True, slots=True)
class DeclaredType:
    """One declared type as a reader sees it (:meth:`EventSchemas.declarations`).

    ``type_`` is the key it was declared under (a resource type, or an exact event type
    when it contains a dot); ``versions`` the accepted ones, oldest first;
    ``publish_version`` what producers stamp; ``json_schemas`` the payload JSON Schema
    of each version that declared one (a copy).
    """

    type_: str
    versions: tuple[int, ...]
    publish_version: int
    json_schemas: Mapping[int, Mapping[str, Any]]

    @property
    def is_event_type(self) -> bool:
        """True for an exact event type (``user.deleted``), False for a resource type."""
        return "." in self.type_


class EventSchemas:
    """The versions of an app's event types (module doc).  Declare, then :meth:`check`."""

    def __init__(self) -> None:
        self._chains: dict[str, _Chain] = {}

    # -- declaring --------------------------------------------------------------------
    def version(
        self,
        type_: str,
        version: int,
        validate: PayloadValidator,
        *,
        json_schema: Mapping[str, Any] | None = None,
    ) -> None:
        """Declare ``validate`` as the payload validator of ``type_`` at ``version``.

        ``type_`` is a resource type (``"user"``) or an exact event type
        (``"user.deleted"``, contains a dot).  ``json_schema``: the payload's JSON
        Schema, for the event catalog (module doc); a copy is kept.  Declaring a
        version twice, or a ``json_schema`` that is not a JSON object, raises
        :class:`~bridge.errors.ConfigError`.
        """
        _check_version(type_, version)
        schema = None if json_schema is None else _json_object(type_, version, json_schema)
        chain = self._chains.setdefault(type_, _Chain())
        if version in chain.validators:
            raise ConfigError(f"{type_}: schema version {version} is already declared")
        chain.validators[version] = validate
        if schema is not None:
            chain.json_schemas[version] = schema

    def upcaster(self, type_: str, from_version: int, upcast: Upcaster) -> None:
        """Declare ``upcast`` turning a ``from_version`` payload of ``type_`` into the next."""
        _check_version(type_, from_version)
        chain = self._chains.setdefault(type_, _Chain())
        if from_version in chain.upcasters:
            raise ConfigError(
                f"{type_}: an upcaster from v{from_version} to v{from_version + 1} "
                "is already declared"
            )
        chain.upcasters[from_version] = upcast

    def publish_version(self, type_: str, version: int) -> None:
        """Producers stamp ``version`` instead of the current one (a rollout step).

        Lets a release that already *consumes* a new version keep *publishing* the
        previous one until every consumer knows the new one ("upgrade consumers
        first").  It only relabels: the payload is what the producer builds, so this
        suits additive changes (older consumers ignore unknown fields).
        """
        _check_version(type_, version)
        self._chains.setdefault(type_, _Chain()).publish = version

    def check(self) -> None:
        """Fail fast: every declared type has an unbroken chain oldest → current.

        Raises :class:`~bridge.errors.ConfigError` naming the type and the missing
        step (a version without validator, a step without upcaster, an upcaster
        outside the declared versions).
        """
        for type_, chain in sorted(self._chains.items()):
            if not chain.validators:
                raise ConfigError(f"{type_}: upcasters declared but no schema version")
            oldest, current = chain.oldest, chain.current
            for version in range(oldest, current + 1):
                if version not in chain.validators:
                    raise ConfigError(
                        f"{type_}: schema version {version} has no payload model "
                        f"(versions {oldest}..{current} must all be declared)"
                    )
            for version in range(oldest, current):
                if version not in chain.upcasters:
                    raise ConfigError(
                        f"{type_}: no upcaster from v{version} to v{version + 1} "
                        f"(the chain v{oldest} → v{current} has a gap)"
                    )
            if chain.publish is not None and chain.publish not in chain.validators:
                raise ConfigError(
                    f"{type_}: publish version {chain.publish} is not a declared version "
                    f"(v{oldest}..v{current})"
                )
            stray = sorted(v for v in chain.upcasters if not oldest <= v < current)
            if stray:
                raise ConfigError(
                    f"{type_}: upcaster from v{stray[0]} lies outside the declared "
                    f"versions v{oldest}..v{current}"
                )

    # -- reading ----------------------------------------------------------------------
    def _chain(self, event_type: str, resource_type: str) -> tuple[str, _Chain] | None:
        for key in (event_type, resource_type):
            chain = self._chains.get(key)
            if chain is not None and chain.validators:
                return key, chain
        return None

    def current_version(self, event_type: str, resource_type: str) -> int:
        """The version a producer stamps: the current one unless pinned with
        :meth:`publish_version` (1 when the type is not declared)."""
        found = self._chain(event_type, resource_type)
        if found is None:
            return SCHEMA_VERSION
        chain = found[1]
        return chain.publish if chain.publish is not None else chain.current

    @property
    def types(self) -> frozenset[str]:
        """The declared resource and event types."""
        return frozenset(self._chains)

    def declarations(self) -> tuple[DeclaredType, ...]:
        """Every type with at least one version, sorted by key (what a catalog lists).

        Call after :meth:`check`: an unchecked registry may describe a broken chain.
        """
        return tuple(
            DeclaredType(
                type_=type_,
                versions=tuple(sorted(chain.validators)),
                publish_version=chain.publish if chain.publish is not None else chain.current,
                json_schemas={v: _copy(s) for v, s in sorted(chain.json_schemas.items())},
            )
            for type_, chain in sorted(self._chains.items())
            if chain.validators
        )

    def resolve(self, envelope: Envelope, observer: SchemaObserver | None = None) -> Envelope:
        """``envelope`` at the current version of its type, validated (module doc).

        Raises :class:`~bridge.errors.Reject` (``unsupported_schema_version`` or
        ``invalid_payload``); whatever an upcaster raises otherwise propagates.
        """
        found = self._chain(envelope.event_type, envelope.resource_type)
        if found is None:
            return envelope
        key, chain = found
        version, current = envelope.schema_version, chain.current
        if version > current or version < chain.oldest:
            if observer is not None:
                observer.event_unsupported(envelope.event_type, version)
            relation = "newer than" if version > current else "older than"
            raise Reject(
                f"{envelope.event_type} schema_version {version} is {relation} what this "
                f"consumer knows of {key} (v{chain.oldest}..v{current}); "
                "replay the dead letter once the consumer knows it",
                reason=REASON_UNSUPPORTED_SCHEMA_VERSION,
            )
        payload = _validate(chain, envelope, version, envelope.payload)
        if version == current:
            return envelope if payload is envelope.payload else replace(envelope, payload=payload)
        while version < current:
            payload = chain.upcasters[version](payload, envelope)
            if observer is not None:
                observer.event_upcast(envelope.event_type, version)
            version += 1
        payload = _validate(chain, envelope, current, payload)
        return replace(envelope, payload=dict(payload), schema_version=current)


def _validate(
    chain: _Chain, envelope: Envelope, version: int, payload: Mapping[str, Any]
) -> Mapping[str, Any]:
    try:
        return chain.validators[version](payload)
    except _INVALID as exc:
        raise Reject(
            f"{envelope.event_type} payload does not match schema v{version}: "
            f"{_one_line(str(exc))}",
            reason=REASON_INVALID_PAYLOAD,
        ) from exc


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _json_object(type_: str, version: int, schema: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON copy of ``schema`` (so a later change to the caller's dict changes nothing)."""
    if not isinstance(schema, Mapping):
        raise ConfigError(
            f"{type_} v{version}: json_schema must be a JSON Schema object, "
            f"got {type(schema).__name__}"
        )
    try:
        copied: dict[str, Any] = json.loads(json.dumps(dict(schema), allow_nan=False))
    except (TypeError, ValueError) as exc:  # a set, a NaN, a key that is a tuple ...
        raise ConfigError(f"{type_} v{version}: json_schema is not JSON: {exc}") from exc
    return copied


def _copy(schema: Mapping[str, Any]) -> dict[str, Any]:
    copied: dict[str, Any] = json.loads(json.dumps(schema))
    return copied


def _check_version(type_: str, version: int) -> None:
    if not type_:
        raise ConfigError("an event schema needs a resource or event type")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ConfigError(f"{type_}: schema versions are integers >= 1, got {version!r}")
