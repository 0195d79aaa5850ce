"""The Message Center UI in a real headless Chromium, against the real API server.

One browser and one Airflow stack for the module. The dataset is made the way
production makes it: events pushed through the push API, processed by the real
processing code (delivered to the real SMTP sink), archived and turned into statistics
by the real archiving code; then a person logs in, opens every page, checks the figures,
opens an error breakdown, looks an event up, registers an execution account, and a
read-only user looks around.

``MC_UI_SCREENSHOTS=docs/screenshots`` also saves the README's screenshots.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from browser_support import (
    CHROMIUM_ENV,
    FRAME,
    chromium_path,
    login,
    new_context,
    open_tab,
    screenshot_dir,
)
from conftest import BROWSER_SKIP, CONTROL_TABLES, EXECUTION_TABLES, _truncate
from processing_factory import ORDER_TEMPLATE, publish_templates, quarantine

from message_center.db import engine_for

# Checked at collection: without a browser, not even the Airflow stack is started.
pytestmark = [pytest.mark.server, pytest.mark.skipif(
    chromium_path() is None,
    reason=f"{BROWSER_SKIP} (apt-get install -y chromium, or {CHROMIUM_ENV}=...)")]

NEW_ACCOUNT = "mcExecUi"
SENT_RT = ("ui-alice", "ui-bob", "ui-chloe", "ui-david")
ORDER = {"type": "ORDER", "ctx": {"firstName": "Alice", "orderId": "A-1", "total": 59.9}}


def _drain(engine: Any, smtp_port: int) -> None:
    """What the processing DAGs do, once, for both queues (real code, real SMTP)."""
    from message_center.delivery.channels import Channels
    from message_center.delivery.smtp import SmtpSettings
    from message_center.processing import ProcessingSettings, deliver_shard, recover, split_queue
    from message_center.status_sync import sync_event_statuses

    settings = ProcessingSettings(shards=1, max_tries=1)
    for kind in ("rt", "batch"):
        with Channels(SmtpSettings(port=smtp_port), None, kind=kind) as channels:
            recover(engine, settings, kinds=(kind,))
            for claim in split_queue(engine, kind, settings):
                deliver_shard(engine, claim, settings, channels, copy_status=kind == "rt")
    sync_event_statuses(engine)


@pytest.fixture(scope="module")
def dataset(browser, airflow_stack, test_deployment, _smtp_sink_session) -> dict[str, Any]:
    """Events pushed, processed, archived and counted; then a few left pending."""
    from message_center.archiving import archive_window
    from message_center.reporting import refresh_statistics

    execution = engine_for(test_deployment.database_url("execution"))
    control = engine_for(test_deployment.database_url("control"))
    _truncate(execution, EXECUTION_TABLES)
    _truncate(engine_for(test_deployment.database_url("execution2")), EXECUTION_TABLES)
    _truncate(control, CONTROL_TABLES)
    _smtp_sink_session.clear()
    publish_templates(execution, ORDER_TEMPLATE)
    quarantine(execution, "ui-quarantined@example.test")
    _smtp_sink_session.script("ui-bounce@example.test", "always 550 5.1.1 no such user")

    api = httpx.Client(base_url=f"{airflow_stack.base_url}/message-center/v1", timeout=60,
                       headers={"Authorization": f"Bearer {airflow_stack.token()}"})

    def push(**fields: Any) -> int:
        response = api.post("/rtEvents", json={**ORDER, **fields})
        assert response.status_code == 201, response.text
        return int(response.json()["id"])

    ids = {name: push(email=f"{name}@example.test",
                      ctx={"firstName": name[3:].title(), "orderId": f"A-{n}", "total": 10 + n},
                      externalId=f"UI-EXT-{n}")
           for n, name in enumerate(SENT_RT, start=1)}
    ids["failed"] = push(email="ui-bounce@example.test")
    ids["ignored"] = push(email="ui-quarantined@example.test")
    ids["expired"] = push(email="ui-late@example.test", expiration="2020-01-01T00:00:00Z")
    ids["not_taken"] = push(email="ui-unknown@example.test", type="UNKNOWN_TYPE")
    batch = api.post("/batchEvents", json={"events": [
        {**ORDER, "email": f"ui-batch{n}@example.test"} for n in range(3)]})
    assert batch.status_code == 201, batch.text
    _drain(execution, test_deployment.smtp_port)

    now = datetime.now(UTC)
    archive_window(execution, control, 0, now - timedelta(hours=2), now + timedelta(seconds=1),
                   name="ui test")
    refresh_statistics(control, 0, window=(now - timedelta(hours=2), now + timedelta(hours=1)))

    for n in range(3):  # left in the queues: processing is paused in the test stack
        push(email=f"ui-waiting{n}@example.test")
    api.post("/batchEvents", json={"events": [
        {**ORDER, "email": f"ui-waiting-batch{n}@example.test"} for n in range(2)]})
    mail = {str(m["To"]): m for m in _smtp_sink_session.messages()}
    return {"ids": ids, "mail": mail, "execution": execution}


@pytest.fixture(scope="module")
def requested_hosts() -> list[str]:
    return []


@pytest.fixture(scope="module")
def admin(browser, airflow_stack, dataset, requested_hosts) -> Iterator[Any]:
    context = new_context(browser, viewport={"width": 1400, "height": 900},
                                  color_scheme="light", accept_downloads=True)
    context.on("request", lambda request: requested_hosts.append(urlsplit(request.url).netloc))
    page = context.new_page()
    login(page, airflow_stack.base_url, "admin", airflow_stack.password)
    yield page
    context.close()


def frame(page: Any) -> Any:
    return page.frame_locator(FRAME)


def number(locator: Any) -> int:
    return int(re.sub(r"[^\d]", "", locator.inner_text()))


def test_message_center_is_in_airflows_navigation_with_live_figures(admin, airflow_stack):
    from playwright.sync_api import expect

    admin.get_by_role("link", name="Message Center").click()
    admin.wait_for_url(re.compile(r".*/plugin/message-center.*"))
    ui = frame(admin)
    row = ui.locator("tr[data-instance='mc_execution']")
    expect(row.locator("[data-field='rtPending']")).to_have_text("3")
    expect(row.locator("[data-field='batchPending']")).to_have_text("2")
    expect(row.locator("[data-field='sentLastHour']")).to_have_text("7")
    expect(row.locator("[data-field='health']")).to_contain_text("ok")
    for dag_id in ("rtEventsProcessing", "batchEventsProcessing", "updateEventStatus",
                   "mcSynch_mcExec1"):
        expect(row.locator(f"[data-dag='{dag_id}']")).to_be_visible()
    expect(row.locator("[data-dag='rtEventsProcessing']")).to_contain_text("paused")
    expect(ui.locator("tr[data-instance='mc_execution2'] [data-field='rtPending']")
           ).to_have_text("0")
    # The page follows Airflow's colour mode (here: the system's, Airflow's default).
    expect(ui.locator("html")).to_have_attribute("data-theme", "light")
    admin.emulate_media(color_scheme="dark")
    expect(ui.locator("html")).to_have_attribute("data-theme", "dark")
    background = ui.locator("body").evaluate("b => getComputedStyle(b).backgroundColor")
    assert background == "rgb(9, 9, 11)"
    admin.emulate_media(color_scheme="light")
    expect(ui.locator("html")).to_have_attribute("data-theme", "light")
    # Deep links: Airflow mirrors the page's path into its own URL, and back.
    admin.goto(f"{airflow_stack.base_url}/plugin/message-center/message-center/ui/lookup"
               "?q=ui-alice%40example.test")
    expect(frame(admin).locator("#lookup-results tbody tr")).to_have_count(1)


def test_the_overview_shows_a_relay_that_is_down(admin, airflow_stack, dataset):
    """The relay's circuit breaker, as the delivery leaves it after five refused
    connections (message_center.delivery.breaker, shared in the execution database)."""
    from playwright.sync_api import expect

    from message_center.delivery.breaker import BreakerPolicy, DatabaseBreakerStore

    relay = "smtp://relay.example.test:25"
    store = DatabaseBreakerStore(dataset["execution"])
    for _ in range(BreakerPolicy().threshold):
        store.failure(relay, "email", "cannot connect to SMTP server relay.example.test:25: "
                      "ConnectionRefusedError", pause=0, policy=BreakerPolicy())
    try:
        admin.goto(f"{airflow_stack.base_url}/plugin/message-center/message-center/ui/"
                   "overview")
        row = frame(admin).locator("tr[data-instance='mc_execution']")
        down = row.locator(f"[data-field='relay-down'][data-relay='{relay}']")
        expect(down).to_contain_text("relay down")
        expect(down).to_contain_text("ConnectionRefusedError")
        expect(row.locator("[data-field='health'] .badge").first).to_have_text("warning")
        store.success(relay)  # the relay answers again
        admin.reload()
        row = frame(admin).locator("tr[data-instance='mc_execution']")
        expect(row.locator("[data-field='health'] .badge").first).to_have_text("ok")
        expect(row.locator("[data-field='relay-down']")).to_have_count(0)
    finally:
        store.success(relay)


def test_reports_show_the_pushed_events_and_open_an_error_breakdown(admin, dataset):
    from playwright.sync_api import expect

    ui = open_tab(admin, "Service level")
    expect(ui.locator("#total-incoming .value")).to_have_text("11")
    expect(ui.locator("#total-processed .value")).to_have_text("11")
    expect(ui.locator("#total-sent .value")).to_have_text("7")
    for cause in ("not_taken_into_account", "expired", "failed", "ignored"):
        expect(ui.locator(f"tr[data-cause='{cause}'] [data-field='count']")).to_have_text("1")
    # 4 errors out of 11 processed: over the 20 % alert threshold, coloured so.
    expect(ui.locator("#indicator-error-rate")).to_have_attribute("data-level", "alert")
    expect(ui.locator("#indicator-error-rate .value")).to_have_text("36 %")
    expect(ui.locator("body")).to_have_attribute("data-charts", "4")

    ui.locator("a[data-open-errors='failed']").click()
    rows = ui.locator("#error-events tbody tr")
    expect(rows).to_have_count(1)
    failed = dataset["ids"]["failed"]
    expect(rows.first).to_have_attribute("data-event", str(failed))
    expect(rows.first).to_contain_text("550")
    rows.first.locator("a").click()
    expect(ui.locator("h1")).to_contain_text("Delivery failed")
    # Its bulk action link opens the Bulk actions form with the drill-down's filter.
    ui = open_tab(admin, "Service level")
    ui.locator("a[data-open-errors='failed']").click()
    ui.locator("#errors-bulk a[data-bulk='retry'][data-bulk-scope='filter']").click()
    ui.locator("html[data-mc-ready] #bulk-form").wait_for()
    expect(ui.locator("#b-action")).to_have_value("retry")
    expect(ui.locator("#b-status")).to_have_value("failed")
    expect(ui.locator("#b-unknown")).not_to_be_checked()

    ui = open_tab(admin, "Processing time")
    expect(ui.locator("#total-sent .value")).to_have_text("4")  # the real-time queue
    expect(ui.locator("body")).to_have_attribute("data-charts", "4")
    # Queue times depend on this machine's speed: only that they are classified.
    assert ui.locator("#indicator-queue").get_attribute("data-level") in (
        "ok", "warning", "alert")
    ui.locator("#kind").select_option("batch")
    ui.locator("#report-filter button[type=submit]").click()
    expect(ui.locator("#total-sent .value")).to_have_text("3")

    ui = open_tab(admin, "Event history")
    order = ui.locator("#history-types tr[data-type='ORDER']")
    expect(order.locator("[data-field='events']")).to_have_text("10")
    expect(order.locator("[data-status='sent']")).to_have_text("7")
    expect(order.locator("[data-status='failed']")).to_have_text("1")
    expect(ui.locator("#history-types tr[data-type='UNKNOWN_TYPE'] "
                      "[data-status='not_taken_into_account']")).to_have_text("1")
    with admin.expect_download() as download:
        ui.locator("#history-csv").click()
    csv = Path(download.value.path()).read_text(encoding="utf-8").splitlines()
    assert csv[0].startswith("period_start,event_type,events,pending,pending_delivery,sent")
    assert any(",ORDER,10,0,0,7,1,1,0,1" in line for line in csv[1:]), csv

    # A bad filter is refused with the field named, next to it.
    ui = open_tab(admin, "Service level")
    ui.locator("#period").select_option("custom")
    ui.locator("#report-filter button[type=submit]").click()
    expect(ui.locator("[data-error-for='start']")).to_contain_text("start")


def test_look_an_event_up_and_see_the_message_as_it_was_sent(admin, dataset):
    from playwright.sync_api import expect

    ui = open_tab(admin, "Event lookup")
    ui.locator("#q").fill("")
    ui.locator("#lookup-form button").click()
    expect(ui.locator("#q-error")).to_contain_text("enter an event id")
    ui.locator("#q").fill("UI-EXT-1")
    ui.locator("#lookup-form button").click()
    rows = ui.locator("#lookup-results tbody tr")
    expect(rows).to_have_count(1)
    alice = dataset["ids"]["ui-alice"]
    expect(rows.first).to_have_attribute("data-event", str(alice))
    ui.locator("#q").fill("UI-ALICE@example.test")  # e-mail: any case
    ui.locator("#lookup-form button").click()
    expect(rows).to_have_count(1)
    rows.first.locator("a").click()

    expect(ui.locator("#event-id")).to_have_text(str(alice))
    steps = ui.locator("#timeline li")
    expect(steps.first).to_have_attribute("data-step", "created")
    for step in ("processing", "delivery", "sending", "sent", "final"):
        expect(ui.locator(f"#timeline li[data-step='{step}']")).to_have_count(1)
    expect(ui.locator("#delivery-logs tbody tr")).to_have_count(1)
    expect(ui.locator("#delivery-logs")).to_contain_text("sent")
    expect(ui.locator("#template-version-number")).to_have_text("1")
    delivered = dataset["mail"]["ui-alice@example.test"]
    expect(ui.locator("#message-subject")).to_have_text(str(delivered["Subject"]))
    text = delivered.get_body(("plain",)).get_content()
    assert ui.locator("#message-text").inner_text().strip() == text.strip()
    html = delivered.get_body(("html",)).get_content()
    assert ui.locator("#message-html").get_attribute("srcdoc").strip() == html.strip()

    with admin.expect_download() as download:
        ui.locator("a[download]", has_text="Download the e-mail").click()
    eml = Path(download.value.path()).read_text(encoding="utf-8")
    assert f"Message-ID: {delivered['Message-ID']}" in eml


def _new_execution_database(test_deployment: Any) -> str:
    from mc_local.embedded_pg import ensure_database
    from mc_local.launcher import set_cell_id
    from message_center import migrations

    name = f"{test_deployment.db_prefix}mc_execution3"
    ensure_database(test_deployment.server_url, name)
    url = urlsplit(test_deployment.server_url)._replace(path=f"/{name}").geturl()
    migrations.upgrade("execution", url)
    assert set_cell_id(url, 2) == 2
    return url.replace("postgresql://", "postgres://", 1)


def test_create_the_archiving_workflow_and_see_its_dag(admin, airflow_stack, test_deployment):
    from playwright.sync_api import expect

    from message_center.registry import load_registry, remove_account

    uri = _new_execution_database(test_deployment)
    token = airflow_stack.token()
    api = httpx.Client(base_url=f"{airflow_stack.base_url}/api/v2", timeout=30,
                       headers={"Authorization": f"Bearer {token}"})
    api.delete(f"/connections/{NEW_ACCOUNT}")
    ui = open_tab(admin, "Execution accounts")
    ui.locator("button[data-account='mcExec2'][data-account-action='test']").click()
    expect(ui.locator("#account-result-mcExec2")).to_contain_text("cell id 1 matches")

    form = ui.locator("#new-account")
    form.locator("[name=name]").fill(NEW_ACCOUNT)
    form.locator("[name=label]").fill("UI instance")
    form.locator("[name=cellId]").fill("3")  # wrong on purpose
    form.locator("[name=connUri]").fill(uri)
    form.locator("button[data-action='test']").click()
    expect(form.locator("[name=cellId] ~ .error")).to_contain_text("cell 2")
    form.locator("[name=cellId]").fill("2")
    form.locator("button[data-action='test']").click()
    result = ui.locator("#new-account-result")
    expect(result).to_contain_text("cell id 2 matches")
    registered_at = time.monotonic()
    try:
        form.locator("button[data-action='create']").click()
        expect(result).to_have_attribute("data-dag-ready", f"mcSynch_{NEW_ACCOUNT}",
                                         timeout=180_000)
        print(f"DAG active {time.monotonic() - registered_at:.0f} s after registration")
        expect(result).to_contain_text("unpaused")
        assert load_registry(airflow_stack.registry).get(NEW_ACCOUNT).cell_id == 2
        assert api.get(f"/connections/{NEW_ACCOUNT}").json()["schema"].endswith("execution3")
        dag = api.get(f"/dags/mcSynch_{NEW_ACCOUNT}").json()
        assert dag["is_paused"] is False and dag["is_stale"] is False
        # The page's link opens the DAG in Airflow itself (not inside the frame) ...
        result.locator("a[data-airflow]").click()
        admin.wait_for_url(re.compile(rf".*/dags/mcSynch_{NEW_ACCOUNT}$"))
        # ... and Airflow's DAG list shows it (its search: a prefix of the display name).
        admin.goto(f"{airflow_stack.base_url}/dags?name_pattern=Message+Center+archiving+UI")
        expect(admin.get_by_text("Message Center archiving UI instance").first).to_be_visible(
            timeout=60_000)
    finally:
        if load_registry(airflow_stack.registry).get(NEW_ACCOUNT):
            remove_account(airflow_stack.registry, NEW_ACCOUNT)
        api.delete(f"/connections/{NEW_ACCOUNT}")


def test_a_read_only_user_sees_the_reports_but_no_change_buttons(browser, airflow_stack,
                                                                 dataset):
    from playwright.sync_api import expect

    context = new_context(browser, viewport={"width": 1400, "height": 900})
    try:
        page = context.new_page()
        login(page, airflow_stack.base_url, airflow_stack.viewer_user,
              airflow_stack.viewer_password)
        page.get_by_role("link", name="Message Center").click()
        ui = frame(page)
        expect(ui.locator("tr[data-instance='mc_execution'] [data-field='rtPending']")
               ).to_have_text("3")
        ui = open_tab(page, "Service level")
        expect(ui.locator("#total-sent .value")).to_have_text("7")
        ui.locator("a[data-open-errors='failed']").click()  # its events, no bulk links
        expect(ui.locator("#error-events tbody tr")).to_have_count(1)
        expect(ui.locator("#errors-bulk")).to_have_count(0)
        ui = open_tab(page, "Execution accounts")
        expect(ui.locator("tr[data-account='mcExec1']")).to_be_visible()
        expect(ui.locator("button")).to_have_count(0)
        expect(ui.locator("#new-account")).to_have_count(0)
        status = ui.locator("body").evaluate("""() => fetch('api/accounts/mcExec1/enabled', {
            method: 'POST', credentials: 'same-origin',
            headers: {'Content-Type': 'application/json', 'X-Requested-With': 'XMLHttpRequest'},
            body: JSON.stringify({enabled: false})}).then(r => r.status)""")
        assert status == 403
    finally:
        context.close()


def test_the_api_docs_load_from_this_server_only(browser, airflow_stack, requested_hosts):
    from playwright.sync_api import expect

    context = new_context(browser)
    hosts: list[str] = []
    context.on("request", lambda request: hosts.append(urlsplit(request.url).netloc))
    try:
        page = context.new_page()
        page.goto(f"{airflow_stack.base_url}/message-center/docs")
        expect(page.locator(".swagger-ui .info .title")).to_contain_text(
            "Message Center push API")
        expect(page.locator(".opblock-summary-path", has_text="/v1/rtEvents")).to_be_visible()
    finally:
        context.close()
    host = urlsplit(airflow_stack.base_url).netloc
    assert set(hosts) == {host}
    # Every page the admin opened in this module, Airflow's own included: this server only.
    assert requested_hosts and set(requested_hosts) <= {host, ""}, set(requested_hosts)


@pytest.mark.skipif(screenshot_dir() is None, reason="screenshots only with MC_UI_SCREENSHOTS")
def test_screenshots_for_the_readme(browser, airflow_stack, test_deployment, dataset):
    """The README's screenshots: this module's events plus a day of traffic on the second
    instance (``MC_UI_SCREENSHOTS=docs/screenshots make test PYTEST_ARGS=<this file>``)."""
    from playwright.sync_api import expect
    from ui_demo_data import add_demo_day

    folder = screenshot_dir()
    assert folder is not None
    add_demo_day(engine_for(test_deployment.database_url("execution2")),
                 engine_for(test_deployment.database_url("control")), 1)
    ui_url = f"{airflow_stack.base_url}/plugin/message-center/message-center/ui"
    alice = dataset["ids"]["ui-alice"]
    views = [("overview", "overview", "light", "#instances"),
             ("overview-dark", "overview", "dark", "#instances"),
             ("service-level", "service-level", "light", "body[data-charts='4']"),
             ("service-level-dark", "service-level", "dark", "body[data-charts='4']"),
             ("processing-time", "processing-time", "light", "body[data-charts='4']"),
             ("history", "history", "light", "#history-types"),
             ("error-breakdown", "errors?cause=failed", "light", "#error-events"),
             ("lookup", "lookup?q=ui-alice%40example.test", "light", "#lookup-results"),
             ("event", f"events/{alice}", "light", "#timeline"),
             ("accounts", "accounts", "light", "#accounts")]
    for name, path, scheme, ready in views:
        context = new_context(browser, viewport={"width": 1440, "height": 1000},
                                      color_scheme=scheme)
        try:
            page = context.new_page()
            login(page, airflow_stack.base_url, "admin", airflow_stack.password)
            page.goto(f"{ui_url}/{path}")
            expect(frame(page).locator(ready).first).to_be_attached(timeout=60_000)
            page.wait_for_timeout(500)
            page.screenshot(path=str(folder / f"{name}.png"))
        finally:
            context.close()
