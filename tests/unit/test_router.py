"""Router registration and the handler-outcome rules (pure, no I/O)."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from bridge.config import BridgeConfig
from bridge.envelope import Envelope
from bridge.errors import AttemptsExhausted, ConfigError, EnvelopeError, Reject, Retry
from bridge.routing.outcomes import Action, Decision, decide, decide_exhausted, decide_unknown
from bridge.routing.router import Router

CFG = BridgeConfig(app_name="a", destination_app="b", max_deliver=4, backoff=(1.0, 5.0, 15.0))


def envelope(event_type: str = "organization.created") -> Envelope:
    resource = event_type.split(".", maxsplit=1)[0]
    return Envelope(
        event_type=event_type, producer="b", resource_type=resource, resource_id="1", payload={}
    )


async def org_handler(session: AsyncSession, env: Envelope) -> None:
    return None


async def any_user_handler(session: AsyncSession, env: Envelope) -> None:
    return None


def test_exact_event_type_wins_over_resource() -> None:
    router = Router()
    router.on("organization.created", org_handler)
    router.on_resource("organization", any_user_handler)
    assert router.handler_for(envelope("organization.created")) is org_handler
    assert router.handler_for(envelope("organization.deleted")) is any_user_handler
    assert router.handler_for(envelope("user.created")) is None
    assert router.event_types == frozenset({"organization.created"})
    assert router.resource_types == frozenset({"organization"})


def test_registering_twice_or_bad_names_is_a_config_error() -> None:
    router = Router()
    router.on("user.updated", org_handler)
    with pytest.raises(ConfigError, match="already registered"):
        router.on("user.updated", any_user_handler)
    router.on_resource("user", org_handler)
    with pytest.raises(ConfigError, match="already registered"):
        router.on_resource("user", org_handler)
    with pytest.raises(ConfigError):
        router.on("nodot", org_handler)
    with pytest.raises(ConfigError):
        Router(unknown_event_policy="drop")  # type: ignore[arg-type]


def test_retry_uses_schedule_then_dead_letters_on_last_delivery() -> None:
    assert decide(Retry("x"), num_delivered=1, config=CFG) == Decision(Action.RETRY, delay=1.0)
    assert decide(Retry("x"), num_delivered=2, config=CFG) == Decision(Action.RETRY, delay=5.0)
    # past the schedule the last step repeats
    assert decide(Retry("x"), num_delivered=3, config=CFG).delay == 15.0
    assert decide(Retry("x"), num_delivered=4, config=CFG) == Decision(
        Action.DEAD_LETTER, reason="max_deliver_exceeded"
    )


def test_retry_delay_overrides_schedule_and_other_errors_are_transient() -> None:
    assert decide(Retry("x", delay=0.25), num_delivered=2, config=CFG).delay == 0.25
    assert decide(ValueError("boom"), num_delivered=2, config=CFG) == Decision(
        Action.RETRY, delay=5.0
    )
    assert decide(ValueError("boom"), num_delivered=9, config=CFG).action is Action.DEAD_LETTER


def test_reject_and_malformed_dead_letter_at_once() -> None:
    assert decide(Reject("dup domain", reason="conflict"), num_delivered=1, config=CFG) == Decision(
        Action.DEAD_LETTER, reason="conflict"
    )
    assert decide(Reject("no"), num_delivered=1, config=CFG).reason == "rejected"
    assert decide(EnvelopeError("bad"), num_delivered=1, config=CFG).reason == "malformed"


def test_unknown_event_policies() -> None:
    assert decide_unknown("ack", num_delivered=1, config=CFG) is None
    assert decide_unknown("dead_letter", num_delivered=1, config=CFG) == Decision(
        Action.DEAD_LETTER, reason="unknown_event_type"
    )
    assert decide_unknown("retry", num_delivered=1, config=CFG) == Decision(Action.RETRY, delay=1.0)
    assert decide_unknown("retry", num_delivered=4, config=CFG).action is Action.DEAD_LETTER  # type: ignore[union-attr]


def test_only_a_delivery_after_the_last_attempt_is_the_reserved_one() -> None:
    for n in range(1, CFG.max_deliver + 1):
        assert decide_exhausted(n, config=CFG) is None
    reserved = decide_exhausted(CFG.max_deliver + 1, config=CFG)
    assert reserved is not None
    decision, error = reserved
    assert decision == Decision(Action.DEAD_LETTER, reason="max_deliver_exceeded")
    assert isinstance(error, AttemptsExhausted) and "after 4 attempts" in str(error)
    assert decide_exhausted(99, config=CFG) is not None
