"""
### Database cleanup (`cleanup`)

Adobe Campaign's *Database cleanup* technical workflow: every night it deletes what the
Message Center no longer needs, in bounded batches (`batch_rows` rows per transaction,
row locks taken with `SKIP LOCKED`, so event processing never waits for it), and logs
each table's size (`pg_total_relation_size`) before and after. One task group per role
of this deployment (`MC_DEPLOYMENT_ROLES`, default `execution,control`):

**Execution instance** (`mc_execution`)

1. `execution_instance.purge_events` - final events (Sent, Ignored, Delivery failed,
   Event not taken into account, Event expired) whose row last changed more than
   `event_days` ago (default 30), with their delivery logs, **only once the control
   instance archived that very version of both rows**. The archive's progress for this
   instance's cell decides, not the clock: every candidate is checked against
   `archived_event` / `archived_delivery_log` on `mc_control`. A control instance that
   is unreachable, a cell that is not registered as an execution account, or an account
   that is disabled: nothing is deleted, and the log says why. Pending and Pending
   delivery events are never deleted. A plain `VACUUM (ANALYZE)` afterwards makes the
   space reusable at once.
2. `execution_instance.purge_idempotency_keys` - push API `Idempotency-Key`s older than
   their replay window `idempotency_key_hours` (default 24); webhook messages delivered
   or failed (replayable until then), their attempts and deleted subscriptions older than
   `webhook_days` (default 7; pending messages are never deleted).

**Control instance** (`mc_control`)

3. `control_instance.purge_archive` - archived events created more than
   `archived_event_days` ago (default 365), with their archived delivery logs.
4. `control_instance.purge_statistics` - hourly event statistics older than
   `statistics_days` (default 1095, at least the archive delay); the queue size still open
   at the cut-off is carried over, so the reports' queue sizes stay right. The audit
   trail older than `audit_days` (default 1,095) goes too, on both instances.

**Airflow metadata** (always)

5. `airflow_metadata.clean_airflow_metadata` - Airflow's own `airflow db clean` for the
   Message Center's DAGs (tag `message-center`, the archiving DAGs of the registry):
   DAG runs (the latest scheduled run of each DAG is kept), task instances and their
   history, reschedules, XComs and audit log rows older than `airflow_metadata_days`
   (default 14). Task log files are not metadata and are not touched. Tasks cannot reach
   the metadata database in Airflow 3: the command gets it from the `airflow_db`
   connection; without it this task deletes nothing and says so.

**Params** (Trigger DAG w/ config): every delay above, `batch_rows`, and `dry_run`:
report what would be deleted and change nothing. Re-running a run deletes nothing more;
a run that crashed half-way continues where it stopped (each batch commits on its own).
"""

from __future__ import annotations

import pendulum
from airflow.sdk import CronTriggerTimetable, TaskGroup, dag, get_current_context, task

from mc_airflow.cleanup import cleanup_params
from mc_airflow.defaults import DEFAULT_ARGS, deployment_roles
from message_center import dag_ids

ROLES = deployment_roles()


# Each task returns one small dict as one XCom (multiple_outputs=False: not one row per key).


def _now() -> pendulum.DateTime:
    return pendulum.now("UTC")


@dag(
    dag_id=dag_ids.CLEANUP,
    dag_display_name="Database cleanup",
    description="Retention: events, delivery logs, idempotency keys, archive, statistics, "
                "Airflow metadata",
    schedule=CronTriggerTimetable("0 3 * * *", timezone="UTC"),
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["message-center", "maintenance", *ROLES],
    params=cleanup_params(),
    doc_md=__doc__,
)
def cleanup() -> None:
    if "execution" in ROLES:
        with TaskGroup("execution_instance", group_display_name="Execution instance",
                       tooltip="Events, delivery logs, idempotency keys (mc_execution)"):

            @task(task_display_name="Purge archived events and delivery logs",
                  multiple_outputs=False)
            def purge_events() -> dict:
                """Final events past the event delay, with their delivery logs, that the
                control instance archived (checked row by row)."""
                from mc_airflow.cleanup import purge_execution_events

                return purge_execution_events(get_current_context()["params"], _now())

            @task(task_display_name="Purge idempotency keys", multiple_outputs=False)
            def purge_idempotency_keys() -> dict:
                """Push API idempotency keys past their replay window."""
                from mc_airflow.cleanup import purge_execution_idempotency_keys

                return purge_execution_idempotency_keys(get_current_context()["params"], _now())

            purge_events()
            purge_idempotency_keys()

    if "control" in ROLES:
        with TaskGroup("control_instance", group_display_name="Control instance",
                       tooltip="Archive and hourly statistics (mc_control)"):

            @task(task_display_name="Purge the archive", multiple_outputs=False)
            def purge_archive() -> dict:
                """Archived events and delivery logs past the archive delay."""
                from mc_airflow.cleanup import purge_control_archive

                return purge_control_archive(get_current_context()["params"], _now())

            @task(task_display_name="Purge the hourly statistics", multiple_outputs=False)
            def purge_statistics() -> dict:
                """Hourly event statistics past the statistics delay (queue sizes carried)."""
                from mc_airflow.cleanup import purge_control_statistics

                return purge_control_statistics(get_current_context()["params"], _now())

            purge_archive()
            purge_statistics()

    with TaskGroup("airflow_metadata", group_display_name="Airflow metadata",
                   tooltip="DAG runs, task instances, XComs, audit log (airflow db clean)"):

        @task(task_display_name="Clean the Airflow metadata (airflow db clean)",
              multiple_outputs=False)
        def clean_airflow_metadata() -> dict:
            """`airflow db clean` for the Message Center's DAGs, keeping
            `airflow_metadata_days`."""
            from mc_airflow.cleanup import clean_airflow_metadata as clean

            return clean(get_current_context()["params"], _now())

        clean_airflow_metadata()


cleanup()
