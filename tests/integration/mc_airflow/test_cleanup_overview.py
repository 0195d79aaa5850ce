"""The overview page's retention line: the clean-up's delays and its DAG's last run, read
in the API server's way (Airflow's metadata DB) and rendered with the pages' template."""

from __future__ import annotations

from sqlalchemy import text


def test_the_overview_shows_the_retention_delays_and_the_cleanup_dag(dagbag, execution_db,
                                                                     control_db):
    from mc_airflow.ui import app, live

    run = dagbag.dags["cleanup"].test(run_conf={"dry_run": True})
    assert run.state == "success"
    data = live.overview()
    retention = data["retention"]
    assert retention["delays"]["event_days"] == 30
    assert retention["delays"]["idempotency_key_hours"] == 24
    assert retention["dag"]["dagId"] == "cleanup" and retention["dag"]["exists"]
    assert retention["dag"]["lastRun"]["state"] == "success"

    from jinja2 import Environment, FileSystemLoader

    env = Environment(loader=FileSystemLoader(str(app.TEMPLATE_DIR)), autoescape=True)
    env.filters.update(dt=app.format_datetime, age=app.format_age, num=app.format_number)
    env.globals.update(percent=app.format_percent, ms=app.format_ms, count=app.format_number)
    page = env.get_template("overview.html").render(
        data=data, base="/message-center/ui", pages=app.PAGES, page="overview",
        user_name="admin")
    assert 'id="retention"' in page and 'data-dag="cleanup"' in page
    assert "final events and their delivery logs 30 days once archived" in page
    with execution_db.connect() as conn:  # a dry run
        assert conn.execute(text("SELECT count(*) FROM rt_event")).scalar() == 0
