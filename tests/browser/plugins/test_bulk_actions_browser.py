"""The *Bulk actions* and *Audit* pages in a real headless Chromium against the real API
server: from an event lookup, a person opens the bulk action form prefilled with the
events found, runs the dry run, confirms with the count (an ``mcBulkAction`` run starts),
then reads the audit trail and exports it as CSV. Nothing is loaded from another host.
Skipped without Chromium (tests/browser_support.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from browser_support import CHROMIUM_ENV, chromium_path, launch, login, open_tab
from conftest import BROWSER_SKIP
from processing_factory import insert_events

from message_center.ids import to_public

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


def test_bulk_action_from_the_lookup_then_the_audit(browser, airflow_stack, execution_db,
                                                     control_db):
    from playwright.sync_api import expect

    (event_id,) = insert_events(execution_db, "batch", 1, email="bulk-ui@example.test",
                                scheduled="2999-01-01T00:00:00Z", notify=False)
    public = str(to_public(event_id))
    token = airflow_stack.token()
    quarantined = httpx.put(  # a manual change the Audit page must show
        f"{airflow_stack.base_url}/message-center/v1/quarantine/email/audited@example.test",
        headers={"Authorization": f"Bearer {token}"}, json={"reason": "asked by phone"},
        timeout=30)
    assert quarantined.status_code == 200, quarantined.text
    hosts: list[str] = []
    context = browser.new_context(viewport={"width": 1400, "height": 900},
                                  accept_downloads=True)
    context.on("request", lambda request: hosts.append(urlsplit(request.url).netloc))
    page = context.new_page()
    try:
        login(page, airflow_stack.base_url, "admin", airflow_stack.password)
        page.goto(f"{airflow_stack.base_url}/message-center/ui/lookup?by=id&q={public}")
        page.locator("#lookup-bulk a[data-bulk='cancel']").click()
        page.locator("html[data-mc-ready] #bulk-form").wait_for()
        expect(page.locator("#b-ids")).to_have_value(public)
        expect(page.locator("#b-action")).to_have_value("cancel")
        page.locator("#b-dry-run").click()
        expect(page.locator("#bulk-count")).to_have_text("1")
        expect(page.locator("#bulk-sample tbody tr")).to_contain_text(public)
        page.locator("#bulk-confirm").click()
        expect(page.locator("#bulk-result")).to_contain_text("DAG run bulk__cancel__")
        run_id = page.locator("#bulk-result").get_attribute("data-run-id")
        # A bad filter is refused naming the field, next to it.
        page.locator("#b-instance").fill("999")
        page.locator("#b-dry-run").click()
        expect(page.locator("#b-instance ~ .error")).to_contain_text("cell id from 0 to 255")

        page.goto(f"{airflow_stack.base_url}/")
        page.get_by_role("link", name="Message Center").click()
        ui = open_tab(page, "Audit")
        expect(ui.locator("#audit")).to_contain_text("quarantine.add")
        expect(ui.locator("#audit")).to_contain_text("email audited@example.test")
        with page.expect_download() as download:
            ui.locator("#audit-csv").click()
        csv = download.value.path().read_text()
        assert csv.startswith("at,instance,actor,action,target,details")
        assert "quarantine.add" in csv and "admin" in csv
    finally:
        context.close()
    base = urlsplit(airflow_stack.base_url).netloc
    assert {h for h in hosts if h} <= {base}, hosts
    run = httpx.get(f"{airflow_stack.base_url}/api/v2/dags/mcBulkAction/dagRuns/{run_id}",
                    headers={"Authorization": f"Bearer {token}"}, timeout=30).json()
    assert run["conf"]["filter"] == {"ids": [public]} and run["conf"]["user"] == "admin"
