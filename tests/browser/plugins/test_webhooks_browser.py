"""The *Webhooks* page in a real headless Chromium against the real API server: a person
logs in, opens Message Center > Webhooks, sees each endpoint with its figures and last
attempts, sends a test, replays, disables and enables again; a viewer sees no action.
Nothing is loaded from another host. Skipped without Chromium (tests/browser_support.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from browser_support import CHROMIUM_ENV, chromium_path, launch, login, open_tab
from conftest import BROWSER_SKIP
from sqlalchemy import text

pytestmark = [pytest.mark.server, pytest.mark.skipif(
    chromium_path() is None,
    reason=f"{BROWSER_SKIP} (apt-get install -y chromium, or {CHROMIUM_ENV}=...)")]



@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


def test_the_webhooks_page(browser, airflow_stack, control_db, execution_db):
    from playwright.sync_api import expect

    created = httpx.post(f"{airflow_stack.base_url}/message-center/v1/webhooks",
                         headers={"Authorization": f"Bearer {airflow_stack.token()}"},
                         json={"url": "https://93.184.215.14/hook", "events": ["event.sent"],
                               "description": "web shop"}, timeout=30)
    assert created.status_code == 201, created.text
    wid = created.json()["id"]
    with execution_db.begin() as conn:  # what the dispatcher wrote: 3 ok, 1 refused
        conn.execute(text("""
            INSERT INTO webhook_outbox (id, subscription_id, name, status, done_at)
            VALUES (1, :id, 'event.sent', 'delivered', now())"""), {"id": wid})
        conn.execute(text("""
            INSERT INTO webhook_attempt (outbox_id, subscription_id, status_code, error)
            VALUES (1, :id, 500, 'HTTP 500'), (1, :id, 200, NULL), (1, :id, 200, NULL),
                   (1, :id, 200, NULL)"""), {"id": wid})
    hosts: list[str] = []
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.on("request", lambda request: hosts.append(urlsplit(request.url).netloc))
    page = context.new_page()
    try:
        login(page, airflow_stack.base_url, "admin", airflow_stack.password)
        page.get_by_role("link", name="Message Center").click()
        ui = open_tab(page, "Webhooks")
        row = ui.locator(f"tr[data-webhook='{wid}']")
        expect(row).to_contain_text("https://93.184.215.14/hook")
        expect(row).to_contain_text("web shop")
        expect(row.locator(".success-rate")).to_contain_text("75")
        expect(row.locator(".attempts")).to_contain_text("500")
        row.locator("button[data-test]").click()
        expect(row.locator(".notice")).to_contain_text("test message msg_")
        row.locator("button[data-replay]").click()
        expect(row.locator(".notice")).to_contain_text("queued again")
        row.locator("button[data-toggle]").click()
        expect(ui.locator(f"tr[data-webhook='{wid}'] .state")).to_contain_text("disabled by hand")
        ui.locator(f"tr[data-webhook='{wid}'] button[data-toggle]").click()
        expect(ui.locator(f"tr[data-webhook='{wid}'] .state")).to_contain_text("enabled")
    finally:
        context.close()
    base = urlsplit(airflow_stack.base_url).netloc
    assert {h for h in hosts if h} <= {base}, hosts  # data: and about: URLs have no host
    with execution_db.connect() as conn:
        names = list(conn.execute(text("SELECT name FROM webhook_outbox ORDER BY id")).scalars())
    assert "webhook.test" in names

    viewer = browser.new_context(viewport={"width": 1400, "height": 900})
    page = viewer.new_page()
    try:
        login(page, airflow_stack.base_url, "viewer", airflow_stack.viewer_password)
        page.goto(f"{airflow_stack.base_url}/message-center/ui/webhooks")
        expect(page.locator(f"tr[data-webhook='{wid}']")).to_contain_text("enabled")
        expect(page.locator("button[data-toggle]")).to_have_count(0)
    finally:
        viewer.close()
