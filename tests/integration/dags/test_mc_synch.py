"""The archiving DAGs mcSynch_<account>: generated from the registry (zero, one, several
accounts, bad entries), run for real with dag.test() against the test databases, and an
unreachable instance failing only its own account. (The backfill through the real CLI with
a running scheduler is in test_mc_synch_backfill.py: these tests need no Airflow process,
so they run on any pytest worker, off the stack's chain.)"""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from mc_local.localenv import PROJECT_ROOT
from message_center.archiving import DELIVERY_LOG_COLUMNS, EVENT_COLUMNS
from message_center.ids import NEXT_ID_SQL
from message_center.registry import REGISTRY_ENV

DAGS = PROJECT_ROOT / "dags"
DEMO = """
accounts:
  - {name: mcExec1, label: Execution instance 1, conn_id: mc_execution, cell_id: 0}
  - {name: mcExec2, label: Execution instance 2, conn_id: mc_execution2, cell_id: 1}
"""


def dagbag_for(path: Path):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(path))


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """Point the DAG files at a registry written by the test."""
    path = tmp_path / "execution_accounts.yaml"

    def write(content: str) -> Path:
        path.write_text(content)
        monkeypatch.setenv(REGISTRY_ENV, str(path))
        return path
    return write


# --- generation ---------------------------------------------------------------------------

def test_no_account_no_dag(registry):
    registry("accounts: []\n")
    synch, check = dagbag_for(DAGS / "mc_synch.py"), dagbag_for(DAGS / "mc_synch_registry_check.py")
    assert (synch.dags, synch.import_errors) == ({}, {})
    assert (check.dags, check.import_errors) == ({}, {})


def test_one_account(registry):
    registry("""
accounts:
  - {name: mcExecParis, label: Paris data centre, conn_id: paris_db, cell_id: 42}
""")
    bag = dagbag_for(DAGS / "mc_synch.py")
    assert bag.import_errors == {}
    assert list(bag.dags) == ["mcSynch_mcExecParis"]
    dag = bag.dags["mcSynch_mcExecParis"]
    assert dag.dag_display_name == "Message Center archiving Paris data centre"
    assert (dag.catchup, dag.max_active_runs, dag.is_paused_upon_creation) == (False, 1, False)
    assert set(dag.tags) == {"message-center", "control", "archiving"}
    assert "mcExecParis" in dag.doc_md and "`paris_db`" in dag.doc_md and "| 42 |" in dag.doc_md
    from airflow.sdk import CronDataIntervalTimetable

    assert dag.timetable == CronDataIntervalTimetable("0 * * * *", timezone="UTC")
    assert dag.start_date == datetime(2024, 1, 1, tzinfo=UTC)
    assert {t.task_id for t in dag.tasks} == {
        "check_instance", "archive_events", "archive_delivery_logs", "archive_tracking_logs",
        "update_statistics"}
    assert dag.task_dict["archive_events"].upstream_task_ids == {"check_instance"}
    assert dag.task_dict["archive_delivery_logs"].upstream_task_ids == {"check_instance"}
    assert dag.task_dict["archive_tracking_logs"].upstream_task_ids == {"check_instance"}
    assert dag.task_dict["update_statistics"].upstream_task_ids == {
        "archive_events", "archive_delivery_logs", "archive_tracking_logs"}
    for task in dag.tasks:
        assert task.owner == "message-center" and task.retries >= 1
    assert dag.params["lookback_minutes"] == 15 and dag.params["catch_up_days"] == 7
    assert dag.params["statistics_horizon_days"] == 365


def test_several_accounts_disabled_ones_get_no_dag(registry):
    registry("""
accounts:
  - {name: mcExecC, label: C, conn_id: c, cell_id: 3, schedule: "*/20 * * * *"}
  - {name: mcExecA, label: A, conn_id: a, cell_id: 1}
  - {name: mcExecB, label: B, conn_id: b, cell_id: 2, enabled: false}
""")
    bag = dagbag_for(DAGS / "mc_synch.py")
    assert sorted(bag.dags) == ["mcSynch_mcExecA", "mcSynch_mcExecC"]
    from airflow.sdk import CronDataIntervalTimetable

    assert bag.dags["mcSynch_mcExecC"].timetable == CronDataIntervalTimetable(
        "*/20 * * * *", timezone="UTC")
    again = dagbag_for(DAGS / "mc_synch.py")  # deterministic: same DAGs, same docs
    assert {d: again.dags[d].doc_md for d in again.dags} == {
        d: bag.dags[d].doc_md for d in bag.dags}


def test_bad_entries_are_import_errors_and_good_accounts_keep_their_dags(registry):
    path = registry("""
accounts:
  - {name: mcExec1, label: One, conn_id: mc_execution, cell_id: 0}
  - {name: mcExec2, label: Two, conn_id: mc_execution2, cell_id: 0}
  - {name: mcExec 3, label: Three, conn_id: three, cell_id: 3}
  - {name: mcExec4, label: Four, conn_id: four, cell_id: 4, colour: blue}
  - {name: mcExec5, label: Five, conn_id: five, cell_id: 5}
""")
    synch = dagbag_for(DAGS / "mc_synch.py")
    assert synch.import_errors == {}
    assert sorted(synch.dags) == ["mcSynch_mcExec1", "mcSynch_mcExec5"]
    check = dagbag_for(DAGS / "mc_synch_registry_check.py")
    assert check.dags == {}
    [(file, error)] = check.import_errors.items()
    assert file.endswith("mc_synch_registry_check.py")
    assert "3 bad execution account entries" in error
    assert f"{path}: entry #2 (mcExec2): cell_id 0 is already used by account mcExec1" in error
    assert f"{path}: entry #3 (mcExec 3): name 'mcExec 3' must start with a letter" in error
    assert f"{path}: entry #4 (mcExec4): unknown field(s) ['colour']" in error


def test_an_unreadable_registry_is_an_import_error_not_silence(registry):
    path = registry("accounts:\n  - {name: [\n")
    assert dagbag_for(DAGS / "mc_synch.py").dags == {}
    [error] = dagbag_for(DAGS / "mc_synch_registry_check.py").import_errors.values()
    assert f"{path}: not valid YAML" in error


def test_project_dags_include_the_two_demo_archiving_dags(dagbag):
    assert {"mcSynch_mcExec1", "mcSynch_mcExec2"} <= set(dagbag.dags)
    assert dagbag.dags["mcSynch_mcExec2"].dag_display_name == (
        "Message Center archiving Execution instance 2")
    assert not [f for f in dagbag.import_errors if "mc_synch" in f]


# --- runs -------------------------------------------------------------------------------

def add_events(engine: Engine, kind: str, at: datetime, count: int,
               step=timedelta(minutes=1)) -> list[int]:
    """Delivered ('sent') events: the processing DAGs of a running stack leave them alone."""
    with engine.begin() as conn:
        return list(conn.execute(text(f"""
            INSERT INTO {kind}_event (id, type, email, ctx, status, created, last_modified)
            SELECT {NEXT_ID_SQL}, 'ORDER_CONFIRMED', 'u' || g || '@example.com',
                   jsonb_build_object('n', g), 'sent', :at, :at + :step * g
            FROM generate_series(0, :n - 1) g RETURNING id"""),
            {"at": at, "n": count, "step": step}).scalars())


def add_logs(engine: Engine, kind: str, ids: list[int], at: datetime) -> None:
    with engine.begin() as conn:
        conn.execute(text(f"""
            INSERT INTO delivery_log (id, event_kind, event_id, channel, address, status,
                                      created, last_modified)
            SELECT {NEXT_ID_SQL}, :kind, e, 'email', 'u@example.com', 'sent', :at, :at
            FROM unnest(CAST(:ids AS bigint[])) e"""), {"kind": kind, "ids": ids, "at": at})


def rows(engine: Engine, table: str, where: str = "TRUE", **params) -> list[tuple]:
    columns = DELIVERY_LOG_COLUMNS if "delivery_log" in table else EVENT_COLUMNS
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(
            f"SELECT {', '.join(columns)} FROM {table} WHERE {where} ORDER BY id"), params)]


def archive_of(control: Engine, cell: int) -> dict[str, list[tuple]]:
    return {kind: rows(control, "archived_event", "cell_id = :c AND event_kind = :k",
                       c=cell, k=kind) for kind in ("rt", "batch")} | {
        "delivery_log": rows(control, "archived_delivery_log", "cell_id = :c", c=cell)}


def source_of(engine: Engine, start: datetime, end: datetime) -> dict[str, list[tuple]]:
    window = "last_modified >= :s AND last_modified < :e"
    return {"rt": rows(engine, "rt_event", window, s=start, e=end),
            "batch": rows(engine, "batch_event", window, s=start, e=end),
            "delivery_log": rows(engine, "delivery_log", window, s=start, e=end)}


def test_dag_test_run_archives_its_window_with_the_lookback(
        dagbag, execution_db, execution2_db, control_db, caplog):
    start = datetime(2024, 3, 1, 11, tzinfo=UTC)
    end = start + timedelta(hours=1)
    rt = add_events(execution2_db, "rt", start - timedelta(minutes=10), 30)  # lookback: in
    add_events(execution2_db, "batch", start + timedelta(minutes=5), 20)
    add_events(execution2_db, "batch", end, 5)  # next window
    add_events(execution2_db, "rt", start - timedelta(days=9), 2)  # beyond the catch-up
    add_logs(execution2_db, "rt", rt[:10], start + timedelta(minutes=59))
    add_events(execution_db, "rt", start, 3)  # the other instance: not this DAG's business

    caplog.set_level("INFO")
    # run_after = end: a manual run archives up to when it was triggered (see below)
    run = dagbag.dags["mcSynch_mcExec2"].test(logical_date=end, run_after=end)
    assert run.state == "success"
    assert (run.data_interval_start, run.data_interval_end) == (start, end)
    archived = archive_of(control_db, 1)
    assert archived == source_of(execution2_db, start - timedelta(minutes=15), end)
    assert [len(archived[k]) for k in ("rt", "batch", "delivery_log")] == [30, 20, 10]
    assert archive_of(control_db, 0) == {"rt": [], "batch": [], "delivery_log": []}
    assert "real-time events: 30 read" in caplog.text
    assert "delivery logs: 10 read" in caplog.text

    again = dagbag.dags["mcSynch_mcExec2"].test(logical_date=end, run_after=end)  # a re-run
    assert again.state == "success"
    assert archive_of(control_db, 1) == archived


def sent_now(engine: Engine, email: str) -> int:
    """A real-time event of the current hour that went through: sent, with its log."""
    with engine.begin() as conn:
        event_id = conn.execute(text(f"""
            INSERT INTO rt_event (id, type, email, ctx, status, created, processing,
                                  processed, next_attempt)
            VALUES ({NEXT_ID_SQL}, 'ORDER_CONFIRMED', :email, '{{}}', 'sent',
                    now() - interval '20 ms', now() - interval '15 ms', now(), now())
            RETURNING id"""), {"email": email}).scalar_one()
        log_id = conn.execute(text(f"""
            INSERT INTO delivery_log (id, event_kind, event_id, channel, address, status,
                                      attempts, sending_started, sent_at)
            VALUES ({NEXT_ID_SQL}, 'rt', :e, 'email', :email, 'sent', 1,
                    now() - interval '10 ms', now() - interval '5 ms') RETURNING id"""),
            {"e": event_id, "email": email}).scalar_one()
        conn.execute(text("UPDATE rt_event SET delivery_log_id = :l WHERE id = :e"),
                     {"l": log_id, "e": event_id})
    return event_id


def test_a_manual_run_archives_up_to_now_with_its_statistics(dagbag, execution2_db,
                                                             control_db, caplog):
    """The UI's Trigger button: the run's inferred data interval ends at the last full
    hour, yet the events of the current hour are archived and counted in the reports."""
    from message_center.reporting import ReportFilter, service_level

    first = sent_now(execution2_db, "now@example.test")
    caplog.set_level("INFO")
    now = datetime.now(UTC)
    run = dagbag.dags["mcSynch_mcExec2"].test(logical_date=now)  # Trigger with a date
    assert run.state == "success"
    assert run.data_interval_end <= now.replace(minute=0, second=0, microsecond=0)
    second = sent_now(execution2_db, "later@example.test")
    again = dagbag.dags["mcSynch_mcExec2"].test()  # Trigger without a logical date
    assert again.state == "success"

    with control_db.connect() as conn:
        archived = set(conn.execute(text(
            "SELECT id FROM archived_event WHERE cell_id = 1 AND status = 'sent'")).scalars())
        report = service_level(conn, ReportFilter.last("24h", cells=(1,)))
        stats = conn.execute(text("""
            SELECT hour, sum(received), sum(finished), sum(sending_n) FROM event_stats_hourly
            WHERE cell_id = 1 GROUP BY hour""")).all()
    assert {first, second} <= archived
    assert report.totals.incoming == report.totals.sent == 2
    assert report.totals.avg_sending_ms == pytest.approx(5, abs=1)
    assert [sum(row[i] for row in stats) for i in (1, 2, 3)] == [2, 2, 2]
    this_hour = now.replace(minute=0, second=0, microsecond=0)
    assert {row[0] for row in stats} <= {this_hour, this_hour + timedelta(hours=1)}
    assert "statistics of" in caplog.text


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_instance_fails_its_own_run_and_retries(
        registry, monkeypatch, execution2_db, control_db, capfd):
    registry(DEMO + "  - {name: mcExecDown, label: Down, conn_id: mc_down, cell_id: 9}\n")
    monkeypatch.setenv("AIRFLOW_CONN_MC_DOWN",
                       f"postgres://mc:s3cret@127.0.0.1:{free_port()}/mc_execution")
    bag = dagbag_for(DAGS / "mc_synch.py")
    down = bag.dags["mcSynch_mcExecDown"]
    assert all(task.retries >= 1 for task in down.tasks)
    for task in down.tasks:  # keep the retry, drop the wait
        task.retries, task.retry_delay = 1, timedelta(0)
    run = down.test(logical_date=datetime(2024, 3, 1, 12, tzinfo=UTC))
    assert run.state == "failed"
    states = {ti.task_id: (ti.state, ti.try_number) for ti in run.get_task_instances()}
    assert states["check_instance"] == ("failed", 2)
    assert states["archive_events"][0] == "upstream_failed"
    output = "".join(capfd.readouterr())  # the task log
    assert "account mcExecDown (connection mc_down): execution instance unreachable" in output
    assert "Connection refused" in output and "s3cret" not in output

    add_events(execution2_db, "rt", datetime(2024, 3, 1, 11, 30, tzinfo=UTC), 4)
    noon = datetime(2024, 3, 1, 12, tzinfo=UTC)
    other = bag.dags["mcSynch_mcExec2"].test(logical_date=noon, run_after=noon)
    assert other.state == "success"
    assert len(archive_of(control_db, 1)["rt"]) == 4
