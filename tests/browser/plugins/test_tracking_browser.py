"""The *Tracking* report page and the mirror page in a real headless Chromium: messages of
a tracked template delivered through the real SMTP sink, opened and clicked through the real
tracking server, archived by the real archiving code; a person reads the rates on the page,
then opens a message's "view in your browser" link and sees the text of the mail."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from browser_support import CHROMIUM_ENV, chromium_path, launch, login, open_tab
from conftest import BROWSER_SKIP, free_port
from processing_factory import insert_events, publish_templates

from message_center.archiving import archive_window
from message_center.delivery.channels import Channels
from message_center.delivery.smtp import SmtpSettings
from message_center.processing import ProcessingSettings, deliver_shard, split_queue
from message_center.reporting.tracking import refresh_tracking_statistics
from message_center.status_sync import sync_event_statuses
from message_center.tracking import tokens
from message_center.tracking_server import ServerSettings, create_app

pytestmark = [pytest.mark.server, pytest.mark.skipif(
    chromium_path() is None,
    reason=f"{BROWSER_SKIP} (apt-get install -y chromium, or {CHROMIUM_ENV}=...)")]

KEY = "browser-test-tracking-key-0123"
BROWSER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


@pytest.fixture
def tracking_server(execution_db):
    port = free_port()
    config = tokens.TrackingConfig(f"http://127.0.0.1:{port}", tokens.Signer([KEY]))
    tokens.configure(config)
    app = create_app(ServerSettings(database_url=execution_db.url.render_as_string(False),
                                    config=config, scanner_seconds=0, flush_seconds=0.05))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield app.state.tracking
    finally:
        server.should_exit = True
        thread.join(10)
        tokens.configure(None)


def test_the_tracking_page_and_the_mirror_page(browser, airflow_stack, execution_db,
                                               control_db, smtp_sink, test_deployment,
                                               tracking_server):
    from playwright.sync_api import expect
    from tracking_factory import TRACKED, hrefs, parts

    template = replace(TRACKED, event_type="TRACKED_UI", internal_name="trackedUi")
    publish_templates(execution_db, template)
    smtp_sink.clear()
    insert_events(execution_db, "batch", 4, type="TRACKED_UI",
                  email="ui-tracked{n}@example.test", notify=False)
    settings = ProcessingSettings(shards=1, max_tries=1)
    with Channels(SmtpSettings(port=test_deployment.smtp_port), None, kind="batch") as chans:
        for claim in split_queue(execution_db, "batch", settings):
            deliver_shard(execution_db, claim, settings, chans, copy_status=False)
    sync_event_statuses(execution_db)
    messages = smtp_sink.messages()
    assert len(messages) == 4
    with httpx.Client(headers={"User-Agent": BROWSER_AGENT}) as client:
        for index, message in enumerate(messages[:2]):  # 2 of 4 open, 1 clicks
            html = parts(message)[0]
            client.get(re.search(r'<img src="([^"]+)"', html).group(1))
            if index == 0:
                assert client.get(hrefs(html)[0]).status_code == 302
    assert tracking_server.writer.wait_idle()
    now = datetime.now(UTC)
    archive_window(execution_db, control_db, 0, now - timedelta(hours=1),
                   now + timedelta(seconds=1))
    refresh_tracking_statistics(control_db, 0)

    hosts: list[str] = []
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.on("request", lambda request: hosts.append(urlsplit(request.url).netloc))
    page = context.new_page()
    try:
        login(page, airflow_stack.base_url, "admin", airflow_stack.password)
        page.get_by_role("link", name="Message Center").click()
        ui = open_tab(page, "Tracking")
        row = ui.locator("#tracking-templates tr[data-template='trackedUi']")
        expect(row.locator("[data-field=sent]")).to_have_text("4")
        expect(row.locator("[data-field=opened]")).to_have_text("2")
        expect(row.locator("[data-field=openRate]")).to_have_text("50.0 %")
        expect(row.locator("[data-field=clickRate]")).to_have_text("25.0 %")
        expect(ui.locator("#tracking-links")).to_contain_text("https://shop.example/orders/")
        expect(ui.locator("#chart-tracking-rates")).to_be_visible()
        ui_hosts = set(hosts)

        # the mirror page of the first message, in the same browser
        html, plain = parts(messages[0])
        name, order = re.search(r"Hello (Ada\d+), order (A-\d+)", plain).groups()
        mirror = hrefs(html)[3]
        page.goto(mirror)
        expect(page.locator("body")).to_contain_text(f"Hello {name}, order {order} is confirmed.")
        assert page.locator("meta[name=robots]").first.get_attribute("content") == \
            "noindex, nofollow"
        assert mirror in plain
        page.goto(mirror[:-3] + "AAA")  # a tampered token
        expect(page.locator("body")).to_have_text("Not found")
    finally:
        context.close()
    airflow_host = urlsplit(airflow_stack.base_url).netloc
    assert ui_hosts <= {airflow_host, ""}, ui_hosts
