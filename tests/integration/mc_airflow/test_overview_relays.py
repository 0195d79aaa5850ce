"""The Overview page shows a relay that is down: its circuit breaker, as the delivery
leaves it after five refused connections, read by the page's own code and rendered with
its template (the browser test, tests/browser/plugins/test_ui_browser.py, shows it in Chromium)."""

from __future__ import annotations

from jinja2 import Environment, FileSystemLoader

from message_center.delivery.breaker import BreakerPolicy, DatabaseBreakerStore

RELAY = "smtp://relay.example.test:25"


def render(data: dict) -> str:
    from mc_airflow.ui import app

    env = Environment(loader=FileSystemLoader(str(app.TEMPLATE_DIR)), autoescape=True)
    env.filters.update(dt=app.format_datetime, age=app.format_age, num=app.format_number)
    env.globals.update(percent=app.format_percent, ms=app.format_ms, count=app.format_number)
    return env.get_template("overview.html").render(
        data=data, base="/message-center/ui", pages=app.PAGES, page="overview",
        user_name="admin")


def test_the_overview_shows_a_relay_that_is_down(execution_db, control_db):
    from mc_airflow.ui import live

    store = DatabaseBreakerStore(execution_db)
    for _ in range(BreakerPolicy().threshold):
        store.failure(RELAY, "email", "cannot connect to SMTP server relay.example.test:25: "
                      "ConnectionRefusedError", pause=0, policy=BreakerPolicy())
    data = live.overview()
    (row,) = [r for r in data["rows"] if r["instance"].conn_id == "mc_execution"]
    assert row["live"]["relaysDown"] == [RELAY] and row["live"]["status"] == "warning"
    page = render(data)
    assert f'data-field="relay-down" data-relay="{RELAY}"' in page
    assert "ConnectionRefusedError" in page and "relay down" in page

    store.success(RELAY)  # the relay answers again
    data = live.overview()
    (row,) = [r for r in data["rows"] if r["instance"].conn_id == "mc_execution"]
    assert row["live"]["relaysDown"] == [] and row["live"]["status"] == "ok"
    assert 'data-field="relay-down"' not in render(data)
