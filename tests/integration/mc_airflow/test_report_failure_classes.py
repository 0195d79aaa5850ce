"""The service level page splits *Delivery failed* by failure class and the drill-down
names the class: an archived event whose relay never answered the final "." is shown as
"Outcome unknown (may have been delivered)", read by the report code from the control
database and rendered with the pages' own templates."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, urlencode

import pytest
from jinja2 import Environment, FileSystemLoader
from sqlalchemy import text

from message_center.ids import make_id
from message_center.reporting import ReportFilter, ReportFilterError, error_events, service_level
from message_center.reporting.statistics import recompute_hours

T0 = datetime(2024, 7, 1, 10, tzinfo=UTC)
REASON = "outcome unknown: no reply after the final '.'; the relay may have delivered it"


def render(template: str, **context) -> str:
    from mc_airflow.ui import app, reports

    env = Environment(loader=FileSystemLoader(str(app.TEMPLATE_DIR)), autoescape=True)
    env.filters.update(dt=app.format_datetime, age=app.format_age, num=app.format_number)
    env.globals.update(percent=app.format_percent, ms=app.format_ms, count=app.format_number,
                       channel_choices=app.channel_choices)
    return env.get_template(template).render(
        base="/message-center/ui", pages=app.PAGES, page="service-level", user_name="admin",
        values={"period": "custom"}, error=None, presets=reports.PRESETS, instances=[],
        query="", threshold_error=None, thresholds={}, cause_labels=reports.ERROR_CAUSE_LABELS,
        causes=reports.ERROR_CAUSE_LABELS, next_query=None, **{"can": None, **context})


def archive_failed(control_db) -> None:
    """Two failed rt email events on cell 0 at T0: outcome unknown, and a hard bounce."""
    with control_db.begin() as conn:
        for n, klass in ((1, "unknown"), (2, "hard")):
            at = T0 + timedelta(minutes=n)
            conn.execute(text("""
                INSERT INTO archived_event (cell_id, id, event_kind, type, email,
                    wished_channel, ctx, status, created, last_modified, processing,
                    processed, error_count, delivery_log_id, error_reason)
                VALUES (0, :id, 'rt', 'ORDER', 'a@example.test', 'email', '{}', 'failed',
                        :at, :at, :at, :at, 0, :log, :reason)"""),
                         {"id": make_id(0, n), "log": make_id(0, 100 + n), "at": at,
                          "reason": REASON if klass == "unknown" else "550 5.1.1 unknown"})
            conn.execute(text("""
                INSERT INTO archived_delivery_log (cell_id, id, event_kind, event_id, channel,
                    status, attempts, created, last_modified, sending_started, failure_class)
                VALUES (0, :log, 'rt', :id, 'email', 'failed', 1, :at, :at, :at, :klass)"""),
                         {"id": make_id(0, n), "log": make_id(0, 100 + n), "at": at,
                          "klass": klass})
        recompute_hours(conn, 0, [T0])


def test_the_pages_show_an_unknown_outcome_apart(control_db):
    archive_failed(control_db)
    period = ReportFilter(start=T0, end=T0 + timedelta(hours=1))
    with control_db.connect() as conn:
        report = service_level(conn, period).to_dict()
        failed = error_events(conn, period, "failed").to_dict()

    page = render("service_level.html", report=report)
    row = page.split('data-failure-class="unknown"', 1)[1].split("</tr>", 1)[0]
    assert "of which: Outcome unknown (may have been delivered)" in row
    assert '<td class="num" data-field="count">1</td>' in row
    assert 'data-failure-class="hard"' in page
    assert 'data-failure-class="soft"' not in page  # classes that did not occur stay out

    page = render("errors.html", report=failed, cause="failed")
    assert ('<strong data-failure-class="unknown">Outcome unknown (may have been delivered)'
            '</strong>: outcome unknown: no reply after the final') in page.replace("&#39;", "'")


def capabilities(bulk_actions: bool):
    from mc_airflow.authorization import Capabilities

    return Capabilities(push=frozenset(), read=frozenset({"rt", "batch"}),
                        test_connections=False, register_accounts=False,
                        change_accounts=False, publish_templates=False,
                        bulk_actions=bulk_actions)


def bulk_links(page: str) -> dict[tuple[str, str], dict[str, str]]:
    """``(action, scope) -> the Bulk actions page's query`` of the drill-down's links."""
    found = re.findall(r'data-bulk="(\w+)" data-bulk-scope="(\w+)" '
                       r'href="/message-center/ui/bulk-actions\?([^"]+)"', page)
    return {(action, scope): dict(parse_qsl(html.unescape(query)))
            for action, scope, query in found}


def bulk_form(query: dict[str, str]) -> str:
    """The Bulk actions page as this address renders it (its own prefill)."""
    from starlette.requests import Request

    from mc_airflow.ui import operations
    from message_center import channel as channels
    from message_center.operations import actions
    from message_center.statuses import EVENT_KINDS, FAILURE_CLASSES, EventStatus

    request = Request({"type": "http", "query_string": urlencode(query).encode()})
    return render("bulk_actions.html", prefill=operations._prefill(request),
                  actions=actions.ACTIONS, kinds=EVENT_KINDS,
                  statuses=[(s.value, s.label) for s in EventStatus],
                  classes=FAILURE_CLASSES, channel_names=channels.names())


def test_a_drill_down_opens_the_bulk_actions_prefilled_with_its_filter(control_db):
    """An editor gets Retry / Replay links on the *Delivery failed, of which: outcome
    unknown* drill-down; they open the Bulk actions form with the drill-down's filter (or
    the ids listed), never with the unknown-outcome confirmation ticked; a viewer gets
    none."""
    from mc_airflow.ui import reports

    archive_failed(control_db)
    period = ReportFilter(start=T0, end=T0 + timedelta(hours=1), cells=(0,), channel="email",
                          kind="rt")
    with control_db.connect() as conn:
        unknown = error_events(conn, period, "failed", failure_class="unknown").to_dict()
        with pytest.raises(ReportFilterError) as refused:
            error_events(conn, period, "expired", failure_class="unknown")
    assert refused.value.field == "failureClass"
    assert [i["id"] for i in unknown["items"]] == [make_id(0, 1)]  # not the hard bounce
    bulk = reports.bulk_actions(period, "failed", [str(make_id(0, 1))], "unknown")

    labels = {"unknown": "Outcome unknown"}
    viewer = render("errors.html", report=unknown, cause="failed", bulk=bulk,
                    failure_class="unknown", failure_class_labels=labels,
                    can=capabilities(False))
    assert 'id="errors-bulk"' not in viewer and "bulk-actions?" not in viewer
    page = render("errors.html", report=unknown, cause="failed", bulk=bulk,
                  failure_class="unknown", failure_class_labels=labels,
                  can=capabilities(True))
    assert "Events: Delivery failed, of which: Outcome unknown" in page
    links = bulk_links(page)
    drilled = {"status": "failed", "failureClass": "unknown", "queue": "rt",
               "channel": "email", "instance": "0", "from": "2024-07-01T10:00:00Z",
               "to": "2024-07-01T11:00:00Z"}
    assert links == {("retry", "filter"): {"action": "retry", **drilled},
                     ("replay", "filter"): {"action": "replay", **drilled},
                     ("retry", "ids"): {"action": "retry", "ids": str(make_id(0, 1))},
                     ("replay", "ids"): {"action": "replay", "ids": str(make_id(0, 1))}}

    form = bulk_form(links[("retry", "filter")])
    for field, value in (("action", "retry"), ("status", "failed"), ("class", "unknown"),
                         ("queue", "rt"), ("channel", "email")):
        select = form.split(f'id="b-{field}"', 1)[1].split("</select>", 1)[0]
        assert f'<option value="{value}" selected>' in select, field
    for field, value in (("instance", "0"), ("from", "2024-07-01T10:00:00Z"),
                         ("to", "2024-07-01T11:00:00Z")):
        assert re.search(f'id="b-{field}" name="filter.{field}"[^>]* value="{value}"', form), field
    # A retry of unknown outcomes still needs the operator's own tick (confirmUnknown).
    assert '<input type="checkbox" id="b-unknown" name="confirmUnknown">' in form
    assert ('<input type="checkbox" id="b-unknown" name="confirmUnknown">'
            in bulk_form({**links[("retry", "filter")], "confirmUnknown": "true"}))

    # Final events are never pending: no cancel; a retry only where it can change some.
    assert reports.bulk_actions(period, "expired", ["1"])["actions"] == ["retry", "replay"]
    assert reports.bulk_actions(period, "ignored", ["1"])["actions"] == ["replay"]
