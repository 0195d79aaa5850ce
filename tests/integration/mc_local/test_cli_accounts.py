"""``mc accounts``: list, test and add execution accounts against the test deployment's
real Airflow metadata database (connections) and PostgreSQL databases (cell ids)."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import uuid

import pytest

from mc_local.cli import main
from mc_local.localenv import PROJECT_ROOT
from message_center.registry import REGISTRY_ENV, load_registry


@pytest.fixture
def registry(tmp_path, monkeypatch):
    path = tmp_path / "execution_accounts.yaml"
    monkeypatch.setenv(REGISTRY_ENV, str(path))
    return path


@pytest.fixture
def new_conn_id():
    """A connection id no other test uses; deleted from Airflow afterwards."""
    from mc_airflow import connection_admin

    conn_id = f"mc_test_{uuid.uuid4().hex[:8]}"
    yield conn_id
    connection_admin.delete(conn_id)


@pytest.fixture
def airflow_side_in_process(monkeypatch):
    """``mc accounts`` runs Airflow's side (``python -m mc_airflow.connection_admin``) in a
    subprocess, which imports Airflow each time: here the same ``main()`` runs in the test
    process, with the same arguments, stdin, output and exit code.
    ``test_add_creates_the_connection_and_the_entry`` keeps the real subprocess."""
    from mc_airflow import connection_admin
    from mc_local.cli import accounts

    def run(profile, *args, stdin=None):
        out, err, saved = io.StringIO(), io.StringIO(), sys.stdin
        sys.stdin = io.StringIO(stdin or "")
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = connection_admin.main(list(args))
        finally:
            sys.stdin = saved
        return subprocess.CompletedProcess(["connection_admin", *args], code, out.getvalue(),
                                           err.getvalue())

    monkeypatch.setattr(accounts, "_connection_admin", run)


def execution2_uri(test_deployment) -> str:
    return test_deployment.database_url("execution2").replace("postgresql://", "postgres://")


def test_list_shows_the_demo_accounts(capsys, monkeypatch):
    monkeypatch.delenv(REGISTRY_ENV, raising=False)
    assert main(["accounts", "list"]) == 0
    out = capsys.readouterr().out
    assert f"Registry: {PROJECT_ROOT / 'dags' / 'execution_accounts.yaml'}" in out
    lines = out.splitlines()
    assert lines[1].split() == ["NAME", "LABEL", "CONNECTION", "CELL", "ENABLED", "SCHEDULE",
                                "DAG"]
    assert "mcExec2  Execution instance 2  mc_execution2  1     yes      0 * * * *  " \
           "mcSynch_mcExec2" in out


def test_list_reports_bad_entries(registry, capsys):
    registry.write_text("accounts:\n  - {name: a, label: A, conn_id: a, cell_id: 1, x: 1}\n")
    assert main(["accounts", "list"]) == 1
    captured = capsys.readouterr()
    assert "No execution account registered." in captured.out
    assert f"error: {registry}: entry #1 (a): unknown field(s) ['x']" in captured.err


def test_test_checks_the_connection_and_the_cell_id(registry, capsys, airflow_side_in_process):
    registry.write_text("""accounts:
  - {name: mcExec2, label: Two, conn_id: mc_execution2, cell_id: 1}
  - {name: mcWrong, label: Wrong cell, conn_id: mc_execution, cell_id: 7}
  - {name: mcNoConn, label: No connection, conn_id: mc_does_not_exist, cell_id: 8}
""")
    assert main(["accounts", "test", "mcExec2"]) == 0
    out = capsys.readouterr().out
    assert "mcExec2: connection mc_execution2 reaches postgres://postgres@" in out
    assert "cell id 1 matches" in out
    assert main(["accounts", "test", "mcWrong"]) == 1
    assert ("is the execution instance of cell 0, but the account is registered with cell "
            "id 7") in capsys.readouterr().err
    assert main(["accounts", "test", "mcNoConn"]) == 1
    assert "Airflow connection mc_does_not_exist does not exist" in capsys.readouterr().err
    assert main(["accounts", "test", "nobody"]) == 1
    assert "no account named 'nobody'" in capsys.readouterr().err


def test_add_creates_the_connection_and_the_entry(registry, new_conn_id, test_deployment,
                                                  capsys, monkeypatch):
    uri = execution2_uri(test_deployment)
    monkeypatch.setattr(sys, "stdin", io.StringIO(uri + "\n"))
    assert main(["accounts", "add", "mcExecNew", "--label", "New instance", "--cell-id", "1",
                 "--conn-id", new_conn_id, "--conn-uri", "-"]) == 0
    out = capsys.readouterr().out
    assert "cell id 1 matches" in out
    assert f"Airflow connection {new_conn_id} created" in out
    assert "mcSynch_mcExecNew" in out and "mc airflow backfill create" in out
    [account] = load_registry(registry).accounts
    assert (account.name, account.label, account.conn_id, account.cell_id, account.enabled) == (
        "mcExecNew", "New instance", new_conn_id, 1, True)
    # The connection is in Airflow's metadata database: `test` finds it there.
    assert main(["accounts", "test", "mcExecNew"]) == 0
    assert f"connection {new_conn_id} reaches" in capsys.readouterr().out

    assert main(["accounts", "remove", "mcExecNew", "--delete-connection"]) == 0
    assert f"Airflow connection {new_conn_id} deleted" in capsys.readouterr().out
    assert load_registry(registry).accounts == []


def test_add_refuses_and_changes_nothing(registry, new_conn_id, test_deployment, capsys,
                                         monkeypatch, airflow_side_in_process):
    from mc_airflow import connection_admin

    registry.write_text("accounts:\n  - {name: mcExec2, label: Two, conn_id: mc_execution2, "
                        "cell_id: 1}\n")
    before = registry.read_text()
    uri = execution2_uri(test_deployment)
    # The database behind the URI is cell 1, not 5: refused, no connection created.
    assert main(["accounts", "add", "mcExec5", "--label", "Five", "--cell-id", "5",
                 "--conn-id", new_conn_id, "--conn-uri", uri]) == 1
    err = capsys.readouterr().err
    assert "registered with cell id 5" in err and "nothing registered" in err
    assert "--no-test" not in err  # it would register the very database just refused
    # A cell id already registered is refused before Airflow is even asked.
    assert main(["accounts", "add", "mcExec6", "--label", "Six", "--cell-id", "1",
                 "--conn-id", new_conn_id, "--conn-uri", uri]) == 1
    assert "cell id 1 is already used by account mcExec2" in capsys.readouterr().err
    assert main(["accounts", "add", "bad name", "--label", "X", "--cell-id", "9"]) == 1
    assert "name 'bad name' must start with a letter" in capsys.readouterr().err
    assert main(["accounts", "add", "mcExec7", "--label", "Seven", "--cell-id", "7",
                 "--conn-uri", "mysql://x/y"]) == 1
    assert "--conn-uri must be a postgres://" in capsys.readouterr().err
    assert registry.read_text() == before
    assert connection_admin.main(["get", new_conn_id]) == 2  # never created


def test_add_with_an_existing_connection_then_disable(registry, capsys,
                                                      airflow_side_in_process):
    assert main(["accounts", "add", "mcExecTwo", "--label", "Two again", "--cell-id", "1",
                 "--conn-id", "mc_execution2", "--schedule", "*/30 * * * *"]) == 0
    assert "cell id 1 matches" in capsys.readouterr().out
    [account] = load_registry(registry).accounts
    assert account.schedule == "*/30 * * * *"
    assert main(["accounts", "disable", "mcExecTwo"]) == 0
    assert "disabled" in capsys.readouterr().out
    assert load_registry(registry).enabled == []
    assert main(["accounts", "list"]) == 0
    assert "mcExecTwo  Two again  mc_execution2  1     no" in capsys.readouterr().out
