"""The batch transaction plans the handlers' statements with their parameters
(``plan_cache_mode = force_custom_plan``, set by the claim for that transaction only):
a generic plan cached while a table was small is never used on it once it has grown."""

from __future__ import annotations

import pytest
from consumer_support import Stack, org_event
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from test_inbox import fetch

from bridge.envelope import Envelope
from bridge.inbox.processor import InboxProcessor
from bridge.transport.delivery import Outcome

SETTING = text("SELECT current_setting('plan_cache_mode')")


@pytest.mark.parametrize("optimistic", [True, False])
async def test_handlers_run_with_custom_plans_and_the_setting_ends_with_the_batch(
    stack: Stack, optimistic: bool
) -> None:
    seen: list[str] = []

    async def handler(session: AsyncSession, env: Envelope) -> None:
        seen.append(str(await session.scalar(SETTING)))

    stack.router.on("organization.created", handler)
    processor = InboxProcessor(
        stack.cfg, stack.sessions, stack.router, stack.dead_letters, optimistic=optimistic
    )
    sub = await stack.pull_sub()
    for i in range(3):
        await stack.publish(org_event(stack.cfg, str(i)))
    batch = await fetch(stack, sub, 3)
    await sub.unsubscribe()

    assert await processor.process_batch(batch) == [Outcome.ACKED] * 3
    assert seen == ["force_custom_plan"] * 3
    # SET LOCAL: the pooled connection the batch used is back to the server's default
    async with stack.sessions() as session:
        assert await session.scalar(SETTING) == "auto"
