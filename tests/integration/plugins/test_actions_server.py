"""``POST /message-center/v1/actions`` through the real API server and Airflow's auth
manager: the dry run and the action need the right to edit both processing DAGs (``user``,
``op``, ``admin``; a ``viewer`` gets a 403 naming it and nothing changes), bad input is a
422 naming the field, the guard answers 409 when the count moved, and the action
triggers an ``mcBulkAction`` run that carries the filter and the user."""

from __future__ import annotations

import httpx
import pytest
from processing_factory import insert_events
from sqlalchemy import text

pytestmark = pytest.mark.server

ROLES = ("viewer", "user", "op", "admin")
CAN_ACT = {"viewer": False, "user": True, "op": True, "admin": True}
FILTER = {"queue": "batch", "externalIdPrefix": "bulk-api-"}


@pytest.fixture(scope="module")
def tokens(airflow_stack) -> dict[str, str]:
    return {role: airflow_stack.token(role) for role in ROLES}


def act(airflow_stack, token: str | None, body) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{airflow_stack.base_url}/message-center/v1/actions",
                      headers=headers, json=body, timeout=30)


def pending_events(engine, count: int) -> list[int]:
    ids = insert_events(engine, "batch", count, scheduled="2999-01-01T00:00:00Z", notify=False)
    with engine.begin() as conn:
        conn.execute(text("UPDATE batch_event SET external_id = 'bulk-api-' || id"))
    return ids


@pytest.mark.parametrize("role", ROLES)
def test_dry_run_needs_the_right_to_edit_the_processing_dags(airflow_stack, tokens,
                                                              execution_db, role):
    pending_events(execution_db, 3)
    answer = act(airflow_stack, tokens[role], {"action": "cancel", "filter": FILTER,
                                               "dryRun": True})
    if not CAN_ACT[role]:
        assert answer.status_code == 403, answer.text
        assert "running bulk actions on events needs the permission to edit the DAG " \
               "rtEventsProcessing" in answer.json()["detail"]
        return
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["count"] == 3 and len(body["sample"]) == 3 and "runId" not in body
    assert {row["status"] for row in body["sample"]} == {"pending"}


def test_no_token_is_401(airflow_stack):
    assert act(airflow_stack, None, {"action": "cancel"}).status_code == 401


def test_bad_input_is_422_naming_the_field(airflow_stack, tokens, execution_db):
    for body, field in (({"action": "cancel", "filter": {"status": "lost"}, "dryRun": True},
                         "filter.status"),
                        ({"action": "cancel", "filter": FILTER}, "expectedCount"),
                        ({"action": "nuke", "filter": FILTER, "dryRun": True}, "action")):
        answer = act(airflow_stack, tokens["admin"], body)
        assert answer.status_code == 422, answer.text
        assert answer.json()["detail"][0]["field"] == field


def test_the_action_is_refused_when_the_count_moved_else_runs_as_a_dag_run(
        airflow_stack, tokens, execution_db):
    pending_events(execution_db, 4)
    moved = act(airflow_stack, tokens["user"], {"action": "cancel", "filter": FILTER,
                                                "expectedCount": 2, "tolerance": 1})
    assert moved.status_code == 409, moved.text
    assert moved.json()["detail"]["count"] == 4
    started = act(airflow_stack, tokens["user"], {"action": "cancel", "filter": FILTER,
                                                  "expectedCount": 4})
    assert started.status_code == 202, started.text
    run_id = started.json()["runId"]
    run = httpx.get(f"{airflow_stack.base_url}/api/v2/dags/mcBulkAction/dagRuns/{run_id}",
                    headers={"Authorization": f"Bearer {tokens['admin']}"}, timeout=30)
    assert run.status_code == 200, run.text
    conf = run.json()["conf"]
    assert conf["action"] == "cancel" and conf["user"] == "user"
    assert conf["filter"] == FILTER and conf["expectedCount"] == 4
    # Nothing changed yet: the run does it (the DAG's own test runs it).
    with execution_db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM batch_event WHERE status = 'pending'")
                            ).scalar() == 4


def test_mc_events_cancel_dry_run_then_the_action(airflow_stack, tokens, execution_db,
                                                  capsys):
    from mc_local.cli import main

    pending_events(execution_db, 2)
    common = ["--filter", '{"externalIdPrefix": "bulk-api-"}', "--url", airflow_stack.base_url,
              "--token", tokens["op"]]
    assert main(["events", "cancel", "--dry-run", *common]) == 0
    assert "cancel: 2 event(s) match" in capsys.readouterr().out
    assert main(["events", "cancel", "--expected-count", "5", *common]) == 1
    assert "HTTP 409" in capsys.readouterr().err
    assert main(["events", "cancel", *common]) == 0
    assert "started: mcBulkAction run bulk__cancel__" in capsys.readouterr().out
    assert main(["events", "retry", "--filter", "[]", *common[2:]]) == 2
