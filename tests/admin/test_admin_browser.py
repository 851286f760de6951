"""The admin page in a real headless browser: Chromium from the system's packages,
driven by Playwright (never ``playwright install``: the browser is /usr/bin/chromium).

A server with two laptops, one that synced and one that has not for longer than the
threshold (the server's clock is moved, nothing waits); an administrator logs in
with the browser's own Basic-auth handling and sees both, the silent one marked
stale — in text, and by the stylesheet the page's policy lets in.

Without Chromium or Playwright the test skips with the reason, unless
``CARESYNC_REQUIRE_BROWSER=1`` (CI), where it fails instead.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tests.admin.admin_helpers import ADMIN, HOSTILE_NAME, HOUR_MS, PASSWORD, Clinic, start_clinic

CHROMIUM = os.environ.get("CARESYNC_CHROMIUM", "/usr/bin/chromium")
WAIT_MS = 20_000
"""Upper bound of one wait in the browser; a passing test never comes near it."""


def _missing() -> str | None:
    """Why the browser test cannot run here, or None."""
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[test]')"
    if shutil.which(CHROMIUM) is None:
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    return None


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    missing = _missing()
    if missing is not None:
        if os.environ.get("CARESYNC_REQUIRE_BROWSER") == "1":
            pytest.fail(f"CARESYNC_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)
    from playwright.async_api import async_playwright

    async with async_playwright() as driver:
        chromium = await driver.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            # As root (CI containers) Chromium's sandbox cannot start.
            args=["--no-sandbox", "--disable-dev-shm-usage"],
        )
        try:
            yield chromium
        finally:
            await chromium.close()


async def _stale_clinic(tmp_path: Path) -> Clinic:
    """Two laptops: ``desk-1`` synced 14 h ago; the other was last seen 25 h ago."""
    clinic = await start_clinic(tmp_path)
    clinic.advance(11 * HOUR_MS)
    await clinic.laptops["desk-1"].sync()
    clinic.advance(14 * HOUR_MS)
    return clinic


async def test_the_administrator_sees_the_stale_laptop_marked_in_a_browser(
    tmp_path: Path, browser: Any
) -> None:
    clinic = await _stale_clinic(tmp_path)
    context = await browser.new_context(http_credentials={"username": ADMIN, "password": PASSWORD})
    try:
        page = await context.new_page()
        violations: list[str] = []
        page.on(
            "console",
            lambda message: (
                violations.append(message.text)
                if "Content Security Policy" in message.text
                else None
            ),
        )
        answer = await page.goto(clinic.http_url + "/admin", timeout=WAIT_MS)
        assert answer is not None
        assert answer.status == 200
        stale = page.locator("tr.laptop.stale")
        await stale.first.wait_for(state="visible", timeout=WAIT_MS)
        assert await stale.count() == 1
        stale_text = await stale.inner_text()
        assert HOSTILE_NAME in stale_text  # shown as text, never run as markup
        assert "STALE: not seen" in stale_text
        fresh = page.locator("tr.laptop:not(.stale)")
        assert await fresh.count() == 1
        fresh_text = await fresh.inner_text()
        assert "desk-1" in fresh_text
        assert "STALE" not in fresh_text
        assert "dr.a" in fresh_text
        # The same-origin stylesheet applied (the policy allows it): the stale row is red.
        colour = await stale.locator("td").first.evaluate(
            "cell => getComputedStyle(cell).backgroundColor"
        )
        assert colour == "rgb(253, 232, 232)"
        assert await page.locator("script").count() == 0  # the name's <script> is text
        assert await page.locator('meta[http-equiv="refresh"]').count() == 1
        assert "1 stale" in await page.locator("#stale-summary").inner_text()
        assert violations == []
    finally:
        await context.close()
        await clinic.close()


async def test_a_clinician_is_refused_the_page_in_a_browser(tmp_path: Path, browser: Any) -> None:
    clinic = await start_clinic(tmp_path)
    context = await browser.new_context(
        http_credentials={"username": "dr.a@clinic-a", "password": PASSWORD}
    )
    try:
        page = await context.new_page()
        answer = await page.goto(clinic.http_url + "/admin", timeout=WAIT_MS)
        assert answer is not None
        assert answer.status == 403
        assert "desk-1" not in await page.content()
    finally:
        await context.close()
        await clinic.close()
