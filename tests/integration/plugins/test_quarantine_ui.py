"""The *Quarantine* page through the real API server over plain HTTP: login, filters,
buttons per role, the two actions (quarantine by hand, release) with their permission,
CSRF guard and validation. (Clicking through it: test_quarantine_browser.py.)"""

from __future__ import annotations

import httpx
import pytest

from message_center.delivery import quarantine as q

pytestmark = pytest.mark.server

UI = "/message-center/ui"
CSRF = {"X-Requested-With": "XMLHttpRequest"}


def session(stack, username: str = "admin") -> httpx.Client:
    client = httpx.Client(base_url=stack.base_url, timeout=60, follow_redirects=False)
    client.cookies.set("_token", stack.token(username))
    return client


@pytest.fixture
def quarantined(execution_db):
    with execution_db.begin() as conn:
        q.record_bounces(conn, [q.Bounce("email", "ui-hard@example.test", "hard",
                                         "user_unknown", "550 5.1.1 user unknown", 1, 1)])
        q.add(conn, "sms", "+33600000042", "asked by the customer")
        q.add(conn, "email", "ui-old@example.test", "old")
        q.release(conn, "email", "ui-old@example.test")
    return execution_db


def test_the_page_needs_a_login(airflow_stack):
    with httpx.Client(base_url=airflow_stack.base_url, timeout=60) as anonymous:
        response = anonymous.get(f"{UI}/quarantine")
        assert response.status_code == 303
        assert response.headers["location"].startswith("/auth/login?next=")
        assert anonymous.post(f"{UI}/api/quarantine/release", headers=CSRF,
                              json={"channel": "email", "address": "a@b.test"}).status_code == 401


def test_a_viewer_sees_the_list_and_filters_but_no_button(airflow_stack, quarantined):
    with session(airflow_stack, "viewer") as viewer:
        page = viewer.get(f"{UI}/quarantine")
        assert page.status_code == 200
        assert 'data-address="ui-hard@example.test"' in page.text
        assert 'data-address="+33600000042"' in page.text
        assert 'data-address="ui-old@example.test"' not in page.text  # released: not active
        assert "hard bounce (user_unknown)" in page.text
        assert "data-release" not in page.text and 'id="new-quarantine"' not in page.text
        released = viewer.get(f"{UI}/quarantine", params={"status": "released"}).text
        assert 'data-address="ui-old@example.test"' in released
        sms = viewer.get(f"{UI}/quarantine", params={"channel": "sms"}).text
        assert 'data-address="ui-hard@example.test"' not in sms
        found = viewer.get(f"{UI}/quarantine", params={"address": "UI-HARD"}).text
        assert 'data-address="ui-hard@example.test"' in found and "+33600000042" not in found
        refused = viewer.post(f"{UI}/api/quarantine/release", headers=CSRF,
                              json={"channel": "email", "address": "ui-hard@example.test"})
        assert refused.status_code == 403
        assert refused.json()["detail"].startswith(
            "Forbidden: quarantining or releasing an address needs the permission to edit "
            "the DAG rtEventsProcessing")
    with quarantined.connect() as conn:
        assert q.get(conn, "email", "ui-hard@example.test")["active"]


def test_a_user_releases_and_quarantines(airflow_stack, quarantined):
    with session(airflow_stack, "user") as user:
        page = user.get(f"{UI}/quarantine").text
        assert 'data-release="ui-hard@example.test"' in page and 'id="new-quarantine"' in page
        no_csrf = user.post(f"{UI}/api/quarantine/release",
                            json={"channel": "email", "address": "ui-hard@example.test"})
        assert no_csrf.status_code == 403
        released = user.post(f"{UI}/api/quarantine/release", headers=CSRF,
                             json={"channel": "email", "address": "ui-hard@example.test"})
        assert released.status_code == 200, released.text
        assert released.json()["message"] == (
            "ui-hard@example.test released: its next event is sent again")
        missing = user.post(f"{UI}/api/quarantine/release", headers=CSRF,
                            json={"channel": "email", "address": "nobody@example.test"})
        assert missing.status_code == 404
        bad = user.post(f"{UI}/api/quarantine", headers=CSRF,
                        json={"channel": "email", "address": "not-an-address", "days": "-1"})
        assert bad.status_code == 422
        assert bad.json()["errors"] == {"days": "a number of days above 0, or empty for never"}
        bad = user.post(f"{UI}/api/quarantine", headers=CSRF,
                        json={"channel": "email", "address": "not-an-address"})
        assert bad.json()["errors"] == {
            "address": "address 'not-an-address' is not an email address"}
        added = user.post(f"{UI}/api/quarantine", headers=CSRF, json={
            "channel": "email", "address": "Complained@Example.test", "reason": "complaint",
            "days": "30"})
        assert added.status_code == 200, added.text
    with quarantined.connect() as conn:
        assert not q.get(conn, "email", "ui-hard@example.test")["active"]
        record = q.get(conn, "email", "complained@example.test")
    assert record["active"] and record["source"] == "ui" and record["decided_by"] == "user"
    assert record["reason"] == "complaint" and record["release_at"] is not None
