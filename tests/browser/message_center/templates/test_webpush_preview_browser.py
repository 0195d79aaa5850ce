"""The Web Push template preview in a real headless Chromium: `mc templates preview` writes
a picture of the notification (``.webpush.html``) that shows the rendered title, body and
the page it opens, as a card of a browser notification's size, loading nothing from
anywhere. Skipped without Chromium, like the other browser tests
(see tests/browser_support.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser_support import CHROMIUM_ENV, chromium_path, launch, screenshot_dir
from conftest import BROWSER_SKIP

from message_center.templates import load_templates
from message_center.templates.preview import write_preview

pytestmark = pytest.mark.skipif(
    chromium_path() is None,
    reason=f"{BROWSER_SKIP} (apt-get install -y chromium, or {CHROMIUM_ENV}=...)")

TEMPLATES = Path(__file__).resolve().parents[4] / "include" / "message_templates"


def test_the_preview_shows_the_notification_as_a_browser_would(tmp_path):
    from playwright.sync_api import sync_playwright

    template = load_templates(TEMPLATES).find("orderShippedPush")
    files = write_preview(template, template.seeds[0], tmp_path)
    (card,) = [path for path in files if path.name.endswith(".webpush.html")]

    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = browser.new_page(viewport={"width": 480, "height": 400})
            requested: list[str] = []
            page.on("request", lambda request: requested.append(request.url))
            page.goto(card.as_uri())
            notification = page.locator("#notification")
            assert notification.is_visible()
            assert page.locator("#notification-title").inner_text() == (
                "Alice, your order A-1001 has shipped")
            assert page.locator("#notification-body").inner_text() == (
                "It is on its way with Colissimo. Tap to follow the parcel.")
            assert page.locator("#notification-url").inner_text() == "/orders/A-1001"
            options = page.locator("#notification-options").inner_text()
            assert "86400 s" in options and "normal" in options
            box = notification.bounding_box()
            assert box is not None and 200 <= box["width"] <= 400 and box["height"] >= 50
            assert requested == [card.as_uri()]  # the icon is named, never fetched
            if (shots := screenshot_dir()) is not None:
                notification.screenshot(path=str(shots / "webpush-preview.png"))
        finally:
            browser.close()
