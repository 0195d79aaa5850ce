"""The *Quarantine* page in a real headless Chromium against the real API server: a person
logs in, opens Message Center > Quarantine, filters, releases an address and quarantines
another by hand; nothing is loaded from another host. Skipped without Chromium, like the
other browser tests (see tests/browser_support.py)."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from browser_support import CHROMIUM_ENV, chromium_path, login, new_context, open_tab
from conftest import BROWSER_SKIP

from message_center.delivery import quarantine as q

pytestmark = [pytest.mark.server, pytest.mark.skipif(
    chromium_path() is None,
    reason=f"{BROWSER_SKIP} (apt-get install -y chromium, or {CHROMIUM_ENV}=...)")]



def test_release_and_quarantine_from_the_page(browser, airflow_stack, execution_db):
    from playwright.sync_api import expect

    with execution_db.begin() as conn:
        q.record_bounces(conn, [q.Bounce("email", "ui-gone@example.test", "hard",
                                         "user_unknown", "550 5.1.1 user unknown", 1, 1)])
        q.add(conn, "sms", "+33600000077", "asked by the customer")
    hosts: list[str] = []
    context = new_context(browser, viewport={"width": 1400, "height": 900})
    context.on("request", lambda request: hosts.append(urlsplit(request.url).netloc))
    page = context.new_page()
    try:
        login(page, airflow_stack.base_url, "admin", airflow_stack.password)
        page.get_by_role("link", name="Message Center").click()
        ui = open_tab(page, "Quarantine")
        rows = ui.locator("#quarantine tbody tr")
        expect(rows).to_have_count(2)
        gone = ui.locator("tr[data-address='ui-gone@example.test']")
        expect(gone).to_contain_text("hard bounce (user_unknown)")

        ui.locator("#q-channel").select_option("sms")
        ui.locator("#quarantine-filters button[type=submit]").click()
        expect(rows).to_have_count(1)
        expect(rows.first).to_have_attribute("data-address", "+33600000077")
        ui.locator("#q-channel").select_option("")
        ui.locator("#quarantine-filters button[type=submit]").click()
        expect(rows).to_have_count(2)

        gone.locator("button[data-release]").click()
        expect(gone.locator(".notice")).to_contain_text("released: its next event is sent")
        ui.locator("#n-address").fill("not an address")
        ui.locator("#new-quarantine button[type=submit]").click()
        expect(ui.locator("#new-quarantine .field.invalid .error")).to_contain_text(
            "is not an email address")
        ui.locator("#n-address").fill("complained@example.test")
        ui.locator("#n-reason").fill("complaint")
        ui.locator("#new-quarantine button[type=submit]").click()
        expect(ui.locator("tr[data-address='complained@example.test']")).to_contain_text(
            "complaint")
        expect(ui.locator("tr[data-address='ui-gone@example.test']")).to_have_count(0)
    finally:
        context.close()
    with execution_db.connect() as conn:
        assert q.get(conn, "email", "ui-gone@example.test")["decided_by"] == "admin"
        assert q.get(conn, "email", "complained@example.test")["source"] == "ui"
    host = urlsplit(airflow_stack.base_url).netloc
    assert hosts and set(hosts) <= {host, ""}, set(hosts)


def test_the_suppressions_tab_lists_and_lifts(browser, airflow_stack, execution_db):
    from playwright.sync_api import expect

    from message_center.delivery import suppression

    with execution_db.begin() as conn:
        kept = suppression.suppress(conn, "email", "news-reader@example.test", "newsletter")
        suppression.suppress(conn, "email", "orders@example.test", "orders")
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    try:
        login(page, airflow_stack.base_url, "admin", airflow_stack.password)
        page.get_by_role("link", name="Message Center").click()
        ui = open_tab(page, "Quarantine")
        ui.locator("#tab-suppressions").click()
        ui.locator("#tab-suppressions[aria-current='page']").wait_for()
        rows = ui.locator("#suppressions tbody tr")
        expect(rows).to_have_count(2)
        ui.locator("#s-category").fill("newsletter")
        ui.locator("#suppression-filters button[type=submit]").click()
        expect(rows).to_have_count(1)
        row = ui.locator(f"tr[data-id='{kept['id']}']")
        expect(row).to_contain_text("news-reader@example.test")
        row.locator("button[data-lift]").click()
        expect(row.locator(".notice")).to_contain_text("receives newsletter messages again")
    finally:
        context.close()
    with execution_db.connect() as conn:
        rows, _ = suppression.list_suppressions(conn, status="removed")
    assert [(r["address"], r["decided_by"]) for r in rows] == [
        ("news-reader@example.test", "admin")]
