"""The suppression endpoints of the push API over HTTP on the real execution database:
list with filters, lift one; 401 / 403 / 404. Same rights as the quarantine (reading events
to list, changing the quarantine to lift)."""

from __future__ import annotations

from fastapi.testclient import TestClient
from test_quarantine_api import TOKEN, client  # noqa: F401 - the fixture

from message_center.delivery import suppression


def test_list_filter_and_lift(client, execution_db):  # noqa: F811
    with execution_db.begin() as conn:
        first = suppression.suppress(conn, "email", "Ada@Example.test", "news")
        suppression.suppress(conn, "email", "bob@example.test", "orders", source="manual")
    listed = client.get("/suppressions").json()
    assert listed["total"] == 2
    assert {item["address"] for item in listed["items"]} == {"ada@example.test",
                                                            "bob@example.test"}
    only = client.get("/suppressions", params={"category": "news"}).json()
    assert [item["id"] for item in only["items"]] == [first["id"]]
    assert only["items"][0]["source"] == "unsubscribe" and only["items"][0]["active"]
    assert client.get("/suppressions", params={"address": "BOB"}).json()["total"] == 1

    lifted = client.delete(f"/suppressions/{first['id']}")
    assert lifted.status_code == 200
    assert lifted.json()["status"] == "removed" and lifted.json()["decidedBy"] == "tester"
    assert client.delete(f"/suppressions/{first['id']}").json()["status"] == "removed"
    assert client.get("/suppressions").json()["total"] == 1
    assert client.get("/suppressions", params={"status": "removed"}).json()["total"] == 1
    assert client.delete("/suppressions/999999").status_code == 404


def test_rights(client):  # noqa: F811
    anonymous = TestClient(client.app, base_url=str(client.base_url))
    assert anonymous.get("/suppressions").status_code == 401
    assert client.get("/suppressions", headers={"X-Test-Rights": "none"}).status_code == 403
    assert client.delete("/suppressions/1", headers={"X-Test-Rights": "read"}).status_code == 403
    assert client.get("/suppressions", params={"status": "bogus"}).status_code == 422
