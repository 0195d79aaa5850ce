"""
### Update event status (`updateEventStatus`)

Adobe Campaign's *Update event status* technical workflow: copies the final outcome of
each message from the delivery logs (the ledger) onto its event - **Sent**, **Ignored by
the delivery**, **Delivery failed** - with the time it was processed, for both the
real-time and the batch queue of this execution instance (`mc_execution`).

One task, `update_event_status`: reads the delivery logs changed since the watermark
`updateEventStatus` (table `mc_watermark`) in batches of `batch_size`, and updates their
events with one statement per event kind and batch.

**Incremental and idempotent.** It never scans all events: it walks the
`delivery_log.last_modified` index from the watermark, starting `overlap_seconds` early
to catch transactions that committed late. Only events still *Pending delivery* are
updated, so re-running it (or running it twice at once - batches are serialised by an
advisory lock) changes nothing, and an event that moved on (e.g. *Event expired* after
its last retry) keeps its status.

**Operating it.** Runs every minute, one run at a time, no catch-up. The real-time
processing already copies its outcomes immediately; this DAG settles batch events and
outcomes recovered after a crash. To re-copy a period, lower the watermark:
`UPDATE mc_watermark SET value = '2026-01-01' WHERE name = 'updateEventStatus'`.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, get_current_context, task

from mc_airflow.defaults import DEFAULT_ARGS, has_role
from message_center import dag_ids


@dag(
    dag_id=dag_ids.UPDATE_EVENT_STATUS,
    dag_display_name="Update event status",
    description="Copy sent / ignored / failed from the delivery logs onto the events",
    schedule=timedelta(minutes=1),
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["message-center", "execution"],
    params={
        "batch_size": Param(50_000, type="integer", minimum=1, maximum=10_000_000,
                            title="Batch size",
                            description="Delivery-log rows per statement and commit."),
        "overlap_seconds": Param(120, type="number", minimum=0, maximum=86_400,
                                 title="Overlap (s)",
                                 description="Re-read this much before the watermark "
                                             "(late commits)."),
    },
    doc_md=__doc__,
)
def update_event_status_dag() -> None:
    @task(task_display_name="Update event status")
    def update_event_status() -> dict[str, int]:
        """Copy final outcomes since the watermark onto the events, batch by batch."""
        from mc_airflow.delivery import copy_event_statuses

        return copy_event_statuses(get_current_context()["params"])

    update_event_status()


if has_role("execution"):  # MC_DEPLOYMENT_ROLES
    update_event_status_dag()
