"""Sandbox mode on the Message Center pages: the banner on every page of an instance in
sandbox mode (the real pages app, in process), and the Service level page's sandbox
traffic, read by the report code from the control database and rendered apart."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from test_report_failure_classes import render

from mc_airflow import authorization
from mc_airflow.authorization import Capabilities, EventReadAccess
from mc_airflow.ui import dependencies
from mc_airflow.ui.app import create_ui_app
from message_center.ids import make_id
from message_center.reporting import ReportFilter, service_level
from message_center.reporting.statistics import recompute_hours

BANNER = 'class="mc-sandbox-banner"'
T0 = datetime(2024, 7, 1, 10, tzinfo=UTC)


def pages(sandbox: bool, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    """The pages app as the plugin mounts it, the reader already authenticated and allowed
    to read only (Airflow's auth manager is exercised by the browser and permission tests)."""
    monkeypatch.setattr(authorization, "capabilities", lambda user: Capabilities(
        push=frozenset(), read=frozenset({"rt", "batch"}), test_connections=False,
        register_accounts=False, change_accounts=False, publish_templates=False))
    app = create_ui_app(sandbox_mode=lambda: sandbox)
    reader = dependencies.Reader.__metadata__[0].dependency
    app.dependency_overrides[reader] = lambda: EventReadAccess("admin",
                                                               frozenset({"rt", "batch"}))
    return TestClient(app, root_path="/message-center/ui")


@pytest.mark.parametrize("sandbox", [True, False])
def test_every_page_of_a_sandbox_instance_shows_the_banner(sandbox, monkeypatch):
    page = pages(sandbox, monkeypatch).get("/lookup")
    assert page.status_code == 200
    assert (BANNER in page.text) is sandbox
    if sandbox:
        assert "Sandbox mode" in page.text and "delivers nothing" in page.text


def test_the_service_level_page_shows_sandbox_traffic_apart(control_db):
    with control_db.begin() as conn:
        for n, (status, sandbox) in enumerate((("sent", False), ("sent", True),
                                               ("failed", True)), 1):
            at = T0 + timedelta(minutes=n)
            conn.execute(text("""
                INSERT INTO archived_event (cell_id, id, event_kind, type, email,
                    wished_channel, ctx, status, created, last_modified, processing,
                    processed, error_count, sandbox)
                VALUES (0, :id, 'rt', 'ORDER', 'a@example.test', 'email', '{}', :status,
                        :at, :at, :at, :at, 0, :sandbox)"""),
                         {"id": make_id(0, n), "at": at, "status": status,
                          "sandbox": sandbox})
        recompute_hours(conn, 0, [T0])
    with control_db.connect() as conn:
        report = service_level(conn, ReportFilter(start=T0, end=T0 + timedelta(hours=1)))
    page = render("service_level.html", report=report.to_dict())
    table = page.split('<table id="sandbox">', 1)[1].split("</table>", 1)[0]
    assert '<td class="num" data-field="received">2</td>' in table
    assert '<td class="num" data-field="sent">1</td>' in table
    assert '<td class="num" data-field="failed">1</td>' in table
