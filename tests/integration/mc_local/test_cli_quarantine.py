"""``mc quarantine list|add|release`` against the test deployment's real execution database."""

from __future__ import annotations

import json

from mc_local.cli import main
from message_center.delivery import quarantine as q


def test_add_list_release(execution_db, capsys):
    assert main(["quarantine", "add", "Eve@Example.test", "--reason", "asked by the customer",
                 "--days", "10"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("email eve@example.test: active (manual, until ")
    assert out.rstrip().endswith("- asked by the customer")
    assert main(["quarantine", "add", "+33600000001"]) == 0  # sms from the address
    capsys.readouterr()

    assert main(["quarantine", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["CHANNEL", "ADDRESS", "STATE", "CLASS", "REASON", "DECIDED",
                                "RELEASE"]
    assert {line.split()[1] for line in lines[1:]} == {"eve@example.test", "+33600000001"}
    assert main(["quarantine", "list", "--channel", "sms", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["total"] == 1 and listed["items"][0]["reason"] == "quarantined by hand"
    assert listed["items"][0]["decidedBy"].startswith("mc quarantine")

    assert main(["quarantine", "release", "EVE@example.test"]) == 0
    assert capsys.readouterr().out.startswith("email eve@example.test: released (manual)")
    with execution_db.connect() as conn:
        record = q.get(conn, "email", "eve@example.test")
    assert record["status"] == "released" and not record["active"]
    assert main(["quarantine", "list", "--status", "released"]) == 0
    assert "eve@example.test" in capsys.readouterr().out
    assert main(["quarantine", "list", "--address", "nobody"]) == 0
    assert capsys.readouterr().out.strip() == "No address matches."


def test_clear_errors(execution_db, capsys, test_deployment):
    assert main(["quarantine", "release", "nobody@example.test"]) == 1
    assert capsys.readouterr().err.strip() == (
        "error: email address nobody@example.test is not in quarantine")
    assert main(["quarantine", "add", "not an address", "--channel", "email"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: address 'not an address' is not an email address")
    assert main(["quarantine", "add", "x@example.test", "--days", "0"]) == 2
    assert "expected 0 < days" in capsys.readouterr().err
    url = test_deployment.database_url("execution").rsplit(":", 1)[0] + ":1/nothing"
    assert main(["quarantine", "list", "--database-url", url]) == 1
    assert capsys.readouterr().err.startswith("error: the execution database is unavailable")


def test_a_release_on_the_control_instance(control_db, capsys):
    assert main(["quarantine", "add", "c@example.test", "--instance", "control"]) == 0
    assert main(["quarantine", "release", "c@example.test", "--instance", "control"]) == 0
    assert "released" in capsys.readouterr().out
    with control_db.connect() as conn:
        record = q.get(conn, "email", "c@example.test")
    assert record["status"] == "released" and record["origin_cell"] is None
