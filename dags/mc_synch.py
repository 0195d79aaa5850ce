"""
### Message Center archiving (ACC's mcSynch)

Control instance. One DAG `mcSynch_<account>` per **enabled execution account** of the
registry `dags/execution_accounts.yaml` (managed with `mc accounts add|list|test|remove`).
Every hour it copies that execution instance's **real-time events, batch events,
delivery logs and tracking logs** changed during the hour into the control archive
(`archived_event`, `archived_delivery_log`, `archived_tracking_log` on `mc_control`),
keyed by (cell id, id), keeping the newest version of each row: a status that moved from
Pending to Sent after it was archived is updated too.

1. **check_instance** — connects to the account's database (its Airflow connection) and
   checks its cell id; an unreachable instance fails this account's run with a clear
   error and retries, other accounts are unaffected; a wrong cell id fails at once.
2. **archive_events** / **archive_delivery_logs** / **archive_tracking_logs** — stream
   the rows in chunks (keyset pages of the source, `COPY` into a staging table, one
   `INSERT ... ON CONFLICT` per chunk); the log says how many rows of each kind were read,
   new, updated or already up to date.
3. **update_statistics** — recomputes, from the archive, the hourly event statistics
   the Message Center reports read: every hour the archived changes belong to, and every
   hour of the run's window (a backfill rebuilds its hours; a re-run writes the same
   figures), except hours older than `statistics_horizon_days` (default 365, env
   `MC_STATISTICS_HORIZON_DAYS`), whose archive may already be purged; then the hourly
   tracking statistics (opens, clicks, per hour of sending) of the hours marked.

Windows: a run covers its data interval `[start, end)` of `last_modified`, started
`lookback_minutes` earlier (default 15) so a transaction that committed late is picked up,
and no later than the newest row already archived (at most `catch_up_days` back, default
7), so hours missed while the scheduler was down or the DAG paused are caught up. A
**manual run** (Trigger) archives up to the moment it was triggered, the current hour
included. A **backfill** archives exactly its windows and nothing else:
`mc airflow backfill create --dag-id mcSynch_<account> --from-date ... --to-date ...`.
Re-running any run or backfill duplicates nothing and leaves the archive identical.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import CronDataIntervalTimetable, Param, dag, get_current_context, task

from mc_airflow.defaults import ACCOUNT_REGISTRY, CONTROL_CONN_ID, DEFAULT_ARGS, has_role
from message_center.registry import ExecutionAccount, load_registry, registry_path

log = logging.getLogger(__name__)

LOOKBACK_MINUTES = int(os.environ.get("MC_ARCHIVE_LOOKBACK_MINUTES", "15"))
CATCH_UP_DAYS = int(os.environ.get("MC_ARCHIVE_CATCH_UP_DAYS", "7"))
STATISTICS_HORIZON_DAYS = int(os.environ.get("MC_STATISTICS_HORIZON_DAYS", "365"))
REGISTRY = load_registry(registry_path(ACCOUNT_REGISTRY))


def _account_doc(account: ExecutionAccount) -> str:
    return (f"{__doc__}\n#### This account\n\n| | |\n| --- | --- |\n"
            f"| Internal name | `{account.name}` |\n| Label | {account.label} |\n"
            f"| Connection | `{account.conn_id}` |\n| Cell id | {account.cell_id} |\n"
            f"| Schedule | `{account.cron}` (UTC) |\n| Registry | `{REGISTRY.path.name}` |\n")


def _window(context: Any) -> tuple[Any, Any, bool]:
    """The run's window ``(start, end, is_backfill)``.

    Scheduled runs and backfills: their data interval. A **manual** run (the UI's Trigger
    button, `airflow dags trigger`) archives up to the moment it was triggered (its
    ``run_after``), not only up to the last full hour its inferred data interval ends at,
    so the events of the current hour reach the archive and the reports; it starts at its
    data interval's start (or an hour before its end). ``run_after`` is fixed when the run
    is created: every task of the run, and a retry, use the same end."""
    dag_run = context["dag_run"]
    run_type = getattr(dag_run.run_type, "value", dag_run.run_type)
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    if run_type == "manual":
        run_after = getattr(dag_run, "run_after", None) or pendulum.now("UTC")
        end = max(end, run_after) if end is not None else run_after
    if end is None:
        end = pendulum.now("UTC")
    if start is None or start >= end:
        start = end - timedelta(hours=1)
    return start, end, run_type == "backfill"


def _archive(account: ExecutionAccount, kinds: tuple[str, ...]) -> dict[str, Any]:
    """Archive ``kinds`` for the current run's window; returns the counts (small XCom)."""
    from airflow.sdk.exceptions import AirflowFailException

    from mc_airflow.connections import database_url
    from message_center import archiving

    context = get_current_context()
    params = context["params"]
    start, end, backfill = _window(context)
    lookback = timedelta(0) if backfill else timedelta(minutes=int(params["lookback_minutes"]))
    catch_up = None if backfill else timedelta(days=int(params["catch_up_days"]))
    log.info("%s: %s window [%s, %s) lookback %s, catch-up %s", account.dag_id,
             "backfill (exact)" if backfill else "incremental", start, end, lookback, catch_up)
    try:
        report = archiving.archive_window(
            database_url(account.conn_id), database_url(CONTROL_CONN_ID), account.cell_id,
            start, end, lookback=lookback, catch_up=catch_up, kinds=kinds,
            name=f"account {account.name} (connection {account.conn_id})")
    except archiving.CellIdMismatch as exc:
        raise AirflowFailException(str(exc)) from exc  # retrying cannot fix the registry
    for count in report.counts.values():
        log.info("%s (cell %s) %s", account.name, account.cell_id, count.summary())
    result = report.as_dict()
    if "rt" in kinds:  # the instance's audit trail reaches the control instance (once)
        from message_center import audit
        from message_center.db import engine_for

        with engine_for(database_url(account.conn_id)).connect() as source, \
                engine_for(database_url(CONTROL_CONN_ID)).begin() as control:
            result["audit_rows"] = audit.copy_to_control(source, control, account.cell_id)
    return result


def archiving_dag(account: ExecutionAccount) -> Any:
    """The archiving DAG of one execution account."""

    @dag(
        dag_id=account.dag_id,
        dag_display_name=account.dag_display_name,
        description=(f"Archive {account.label} (cell {account.cell_id}, connection "
                     f"{account.conn_id}) into the control instance"),
        schedule=CronDataIntervalTimetable(account.cron, timezone="UTC"),
        start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
        catchup=False,
        max_active_runs=1,
        is_paused_upon_creation=False,
        default_args=DEFAULT_ARGS,
        doc_md=_account_doc(account),
        tags=["message-center", "control", "archiving"],
        params={
            "lookback_minutes": Param(
                LOOKBACK_MINUTES, type="integer", minimum=0, maximum=1440,
                title="Lookback (minutes)",
                description="Start this much before the window, for late commits."),
            "catch_up_days": Param(
                CATCH_UP_DAYS, type="integer", minimum=0, maximum=366,
                title="Catch-up horizon (days)",
                description="Also start at the newest archived row, at most this far back."),
            "statistics_horizon_days": Param(
                STATISTICS_HORIZON_DAYS, type="integer", minimum=1, maximum=3660,
                title="Statistics horizon (days)",
                description="Hourly statistics older than this are never recomputed: the "
                            "archive behind them may be purged (keep it at most the "
                            "cleanup's archived_event_days)."),
        },
    )
    def archiving() -> None:
        @task(task_display_name="Check the execution instance")
        def check_instance() -> dict[str, Any]:
            """Reach the instance through its connection and check its cell id."""
            from airflow.sdk.exceptions import AirflowFailException

            from mc_airflow.connections import database_url
            from message_center import archiving as arch

            try:
                info = arch.check_instance(
                    database_url(account.conn_id), account.cell_id,
                    name=f"account {account.name} (connection {account.conn_id})")
            except arch.CellIdMismatch as exc:
                raise AirflowFailException(str(exc)) from exc
            log.info("%s: %s is cell %s (PostgreSQL %s)", account.name, info.database,
                     info.cell_id, info.server_version)
            return {"cell_id": info.cell_id, "database": info.database}

        @task(task_display_name="Archive events")
        def archive_events() -> dict[str, Any]:
            """Real-time and batch events changed in the window -> archived_event."""
            return _archive(account, ("rt", "batch"))

        @task(task_display_name="Archive delivery logs")
        def archive_delivery_logs() -> dict[str, Any]:
            """Delivery logs changed in the window -> archived_delivery_log."""
            return _archive(account, ("delivery_log",))

        @task(task_display_name="Archive tracking logs")
        def archive_tracking_logs() -> dict[str, Any]:
            """Tracking hits (opens, clicks, mirror views, unsubscribes) changed in the
            window -> archived_tracking_log."""
            return _archive(account, ("tracking_log",))

        @task(task_display_name="Update the event statistics")
        def update_statistics() -> dict[str, Any]:
            """Recompute the hourly statistics of the hours this account's archiving
            touched (marked by the upserts) and of the run's window, from the archive."""
            from mc_airflow.connections import database_url
            from message_center.db import engine_for
            from message_center.reporting.statistics import refresh_statistics
            from message_center.reporting.tracking import refresh_tracking_statistics

            context = get_current_context()
            start, end, _ = _window(context)
            horizon = timedelta(days=int(context["params"]["statistics_horizon_days"]))
            control = engine_for(database_url(CONTROL_CONN_ID))
            report = refresh_statistics(control, account.cell_id, window=(start, end),
                                        not_before=pendulum.now("UTC") - horizon)
            log.info("%s: %s", account.name, report.summary())
            tracking = refresh_tracking_statistics(control, account.cell_id)
            log.info("%s: %s", account.name, tracking.summary())
            return {**report.as_dict(), "tracking": tracking.as_dict()}

        archived = [archive_events(), archive_delivery_logs(), archive_tracking_logs()]
        check_instance() >> archived >> update_statistics()

    return archiving()


# A control instance archives every account; an execution-only deployment has no archive.
for _account in REGISTRY.enabled if has_role("control") else ():
    globals()[_account.dag_id] = archiving_dag(_account)
