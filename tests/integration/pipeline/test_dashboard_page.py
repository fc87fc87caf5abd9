"""The dashboard page in a real headless browser (Debian's chromium, driven by Playwright): it asks for a key,
shows the numbers the API returns, and they move while a campaign sends. A screenshot is saved with the run's
logs (.local/logs/dashboard.png)."""

from __future__ import annotations

import asyncio
import shutil
import time

import httpx
from playwright.async_api import async_playwright

from api.app import create_app
from tests.helpers.api import new_key, serve

CHROMIUM = "/usr/bin/chromium"
# As the machine's notes say: without these, Chromium tries the closed network at every start.
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _int(text: str) -> int:
    return int(text.replace(",", "").strip() or 0)


async def test_the_dashboard_shows_the_api_s_numbers_and_they_move_while_a_campaign_sends(
        settings, worker, make_campaign):
    assert shutil.which("chromium") == CHROMIUM, "Debian's chromium is not installed (scripts/deps.sh installs it)"
    app = create_app(settings.model_copy(update={"api_key_cache_s": 0}))
    url, stop = serve(app, "dashboard-api")
    key = await new_key(settings, "analyst")
    campaign = await make_campaign(users=8000, channels=("email",))
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = await browser.new_page(viewport={"width": 1400, "height": 1100})
            await page.goto(f"{url}/dashboard")

            # A person is asked for a key; a wrong one is refused with a message.
            await page.get_by_test_id("login").wait_for()
            await page.get_by_test_id("key").fill("hk_not_a_key")
            await page.get_by_test_id("open").click()
            await page.get_by_text("That key was not accepted.").wait_for()
            await page.get_by_test_id("key").fill(key)
            await page.get_by_test_id("open").click()
            await page.get_by_test_id("status").filter(has_text="live").wait_for(timeout=15_000)

            async def shown() -> int:
                return _int(await page.get_by_test_id("messages_sent_today").inner_text())

            async def api_figures() -> dict:
                async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}) as http:
                    return (await http.get("/api/v1/dashboard/realtime")).json()

            deadline = time.monotonic() + 15
            while (before := await shown()) != (await api_figures())["messages_sent_today"]:
                assert time.monotonic() < deadline, "the page does not show the API's figure"
                await asyncio.sleep(0.3)

            await campaign.launch()
            seen: list[int] = []
            deadline = time.monotonic() + 120
            while not seen or seen[-1] < before + len(campaign.user_ids):
                assert time.monotonic() < deadline, f"the page's sent count moved {seen} from {before}"
                value = await shown()
                if not seen or value != seen[-1]:
                    seen.append(value)
                await asyncio.sleep(0.2)
            between = [v for v in seen if before < v < before + len(campaign.user_ids)]
            assert between, seen  # it moved while the campaign sent, not only at the end

            # The campaign's row and funnel show what the analytics API says.
            row = page.locator(f"tr[data-campaign-id='{campaign.campaign_id}']")
            await row.wait_for()
            await row.click()
            await page.get_by_test_id("funnel").locator("[data-step='sent'] .num").filter(
                has_text=f"{len(campaign.user_ids):,}").wait_for(timeout=15_000)
            async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}) as http:
                analytics = (await http.get(f"/api/v1/campaigns/{campaign.campaign_id}/analytics")).json()
            funnel = {s: _int(await page.locator(f"[data-step='{s}'] .num").inner_text())
                      for s in ("sent", "delivered", "opened", "clicked", "converted")}
            assert funnel == {s: analytics["metrics"][s] for s in funnel}
            assert funnel["sent"] == len(campaign.user_ids)
            channel_row = await page.get_by_test_id("detail-channels").locator("tr").first.inner_text()
            assert channel_row.split()[:2] == ["email", f"{len(campaign.user_ids):,}"]
            assert await page.locator("#chart polyline[data-series='sent']").count() == 1

            shot = settings.local_dir / "logs" / "dashboard.png"
            shot.parent.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(shot), full_page=True)
            print(f"dashboard screenshot: {shot}")
            await browser.close()
    finally:
        stop()
