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
   their replay window `idempotency_key_hours` (default 24).

**Params** (Trigger DAG w/ config): every delay above, `batch_rows`, and `dry_run`:
report what would be deleted and change nothing. Re-running a run deletes nothing more;
a run that crashed half-way continues where it stopped (each batch commits on its own).
"""

from __future__ import annotations

import pendulum
from airflow.sdk import CronTriggerTimetable, TaskGroup, dag, get_current_context, task

from mc_airflow.cleanup import cleanup_params, deployment_roles
from mc_airflow.defaults import DEFAULT_ARGS

ROLES = deployment_roles()


def _now() -> pendulum.DateTime:
    return pendulum.now("UTC")


@dag(
    dag_id="cleanup",
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

            @task(task_display_name="Purge archived events and delivery logs")
            def purge_events() -> dict:
                """Final events past the event delay, with their delivery logs, that the
                control instance archived (checked row by row)."""
                from mc_airflow.cleanup import purge_execution_events

                return purge_execution_events(get_current_context()["params"], _now())

            @task(task_display_name="Purge idempotency keys")
            def purge_idempotency_keys() -> dict:
                """Push API idempotency keys past their replay window."""
                from mc_airflow.cleanup import purge_execution_idempotency_keys

                return purge_execution_idempotency_keys(get_current_context()["params"], _now())

            purge_events()
            purge_idempotency_keys()


cleanup()
