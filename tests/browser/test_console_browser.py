"""The operator console in a real headless Chromium (Playwright driving Debian's
chromium), against the real services: System A's console at /console.

- the page loads and its three charts render with data from real traffic;
- a dead letter whose body and headers are HTML and script shows as text (no script
  element, nothing executed);
- an action without the token, and a sign-in with a wrong token, are refused and the
  letter stays;
- signed in, a dead letter is replayed after a confirmation, disappears from the list
  and its organization arrives on A; the audit trail shows it.
"""

from __future__ import annotations

from browser_support import TOKEN, XSS_HEADER, Scene, eventually
from playwright.async_api import BrowserContext, Page

CHARTS = "svg.chart"


async def chart_points(page: Page) -> list[int]:
    values = await page.eval_on_selector_all(
        CHARTS, "nodes => nodes.map(n => Number(n.dataset.points))"
    )
    return [int(v) for v in values]


async def test_the_console_loads_and_its_charts_render_with_data(
    scene: Scene, fresh: BrowserContext
) -> None:
    page = await fresh.new_page()
    response = await page.goto(scene.url)
    assert response is not None and response.status == 200
    assert scene.a.name in await page.inner_text("header")
    for section in ("#health", "#outbox", "#consumer", "#charts", "#dead-letters", "#reconcile",
                    "#issues", "#config", "#audit"):  # fmt: skip
        assert await page.is_visible(section), section

    async def all_charts_have_data() -> list[int] | None:
        await page.reload()
        points = await chart_points(page)
        return points if len(points) == 3 and all(points) else None

    points = await eventually(all_charts_have_data, what="three charts with data", timeout=30)
    assert all(n > 0 for n in points)
    assert await page.locator(f"{CHARTS} polyline, {CHARTS} circle").count() >= 3
    assert await page.locator("#issues table").count() == 2  # conflicts and stale events
    assert await page.locator("#reconcile tbody tr").count() == 1
    issues = await page.inner_text("#issues")
    assert "Conflicts (natural-key collisions, dead-lettered) 1 recorded" in issues
    assert "Stale events (older than the local version, acked) 1 recorded" in issues
    await page.screenshot(path=scene.shot("console-overview.png"), full_page=True)
    await page.close()


async def test_a_dead_letter_of_html_and_script_renders_as_text(
    scene: Scene, fresh: BrowserContext
) -> None:
    page = await fresh.new_page()
    seq = scene.xss_letter.seq
    await page.goto(f"{scene.url}letters/{seq}")
    body = await page.inner_text("#body")
    assert '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">' in body
    assert XSS_HEADER in await page.inner_text("#headers")
    await page.goto(scene.url)
    await page.click(f"#letter-{seq} details summary")
    assert "<script>window.__xss = 1</script>" in await page.inner_text(f"#letter-{seq}")
    assert await page.evaluate("document.querySelectorAll('script, img').length") == 0
    assert await page.evaluate("typeof window.__xss") == "undefined"
    await page.goto(f"{scene.url}letters/{seq}")
    await page.screenshot(path=scene.shot("console-letter.png"), full_page=True)
    await page.close()


async def test_an_action_without_the_token_or_with_a_wrong_one_is_refused(
    scene: Scene, fresh: BrowserContext
) -> None:
    page = await fresh.new_page()
    seq = scene.future_letter.seq
    await page.goto(scene.url)
    assert await page.locator(f"#letter-{seq}").count() == 1
    assert await page.locator("#replay-selected").count() == 0  # no buttons signed out
    refused = await page.request.post(
        f"{scene.url}dlq/replay", form={"one": str(seq), "confirm": "yes"},
        headers={"Origin": scene.url.split("/console/")[0]},
    )  # fmt: skip
    assert refused.status == 403
    assert "sign in with the operator token first" in await refused.text()
    await page.fill("#sign-in input[name=token]", "not-the-operator-token")
    await page.click("#sign-in button")
    assert "wrong operator token" in await page.inner_text("#message")
    await page.goto(scene.url)
    assert await page.locator("#signed-in").count() == 0
    assert await page.locator(f"#letter-{seq}").count() == 1, "the letter is still there"
    assert "refused" in await page.inner_text("#audit")
    await page.close()


async def test_a_dead_letter_is_replayed_after_confirmation_and_disappears(
    scene: Scene, fresh: BrowserContext
) -> None:
    page = await fresh.new_page()
    seq = scene.future_letter.seq
    await page.goto(scene.url)
    await page.fill("#sign-in input[name=token]", TOKEN)
    await page.click("#sign-in button")
    await page.wait_for_selector("#signed-in")
    row = page.locator(f"#letter-{seq}")
    assert "future_version" in await row.inner_text()
    await row.get_by_role("button", name="Replay").click()
    await page.wait_for_selector("#confirm")
    assert "Replay 1 dead letter?" in await page.inner_text("#confirm h2")
    assert str(seq) in await page.inner_text("#confirm table")
    await page.screenshot(path=scene.shot("console-confirm.png"), full_page=True)
    assert await scene.a.has(f"/organizations/{scene.future_org_id}") is False
    await page.click("#confirm-button")
    await page.wait_for_selector("#result")
    assert "Replay: ok" in await page.inner_text("#result h2")
    await page.click("#back")
    await page.wait_for_selector("#dead-letters")
    assert await page.locator(f"#letter-{seq}").count() == 0
    await eventually(lambda: scene.a.has(f"/organizations/{scene.future_org_id}"),
                     what="the replayed organization on A")  # fmt: skip
    audit = await page.inner_text("#audit")
    assert f"dead letters {seq}" in audit and "replay" in audit
    await page.locator("#dead-letters").screenshot(path=scene.shot("console-after-replay.png"))
    await page.locator("#audit").screenshot(path=scene.shot("console-audit.png"))
    await page.close()
