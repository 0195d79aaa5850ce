"""``mc suppressions list|add|remove`` against the test deployment's real execution
database."""

from __future__ import annotations

import json

from mc_local.cli import main


def test_add_list_remove(execution_db, capsys):
    assert main(["suppressions", "add", "Eve@Example.test", "newsletter"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("suppression ") and "email eve@example.test from newsletter" in out
    suppression_id = int(out.split()[1].rstrip(":"))
    assert main(["suppressions", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "CHANNEL", "ADDRESS", "CATEGORY", "STATE", "SOURCE",
                                "DECIDED"]
    assert lines[1].split()[:5] == [str(suppression_id), "email", "eve@example.test",
                                    "newsletter", "active"]
    assert main(["suppressions", "remove", str(suppression_id)]) == 0
    assert capsys.readouterr().out.rstrip().endswith("newsletter: removed")
    assert main(["suppressions", "list", "--status", "all", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["items"][0]["status"] == "removed"
    assert listed["items"][0]["decidedBy"].startswith("mc suppressions")
    assert main(["suppressions", "remove", "999999"]) == 1
    assert main(["suppressions", "add", "not an address", "news"]) == 2
