"""The service level page splits *Delivery failed* by failure class and the drill-down
names the class: an archived event whose relay never answered the final "." is shown as
"Outcome unknown (may have been delivered)", read by the report code from the control
database and rendered with the pages' own templates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from jinja2 import Environment, FileSystemLoader
from sqlalchemy import text

from message_center.ids import make_id
from message_center.reporting import ReportFilter, error_events, service_level
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
        causes=reports.ERROR_CAUSE_LABELS, next_query=None, can=None, **context)


def test_the_pages_show_an_unknown_outcome_apart(control_db):
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
