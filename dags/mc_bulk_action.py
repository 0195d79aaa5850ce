"""
### Bulk action (`mcBulkAction`)

Acts on many events of this execution instance (`mc_execution`) at once, by filter:

- **cancel**: pending events no shard has claimed end *Event expired*, with the reason
  "cancelled by <user>";
- **retry**: failed or expired events known not sent go back to the queue (an outcome
  *unknown* only with `confirmUnknown`: the recipient may get it twice; an event past its
  expiration only with a new `expiration`);
- **replay**: a new event from each final event's body, linked to it (`replayedFrom`).

Triggered by the API (`POST /message-center/v1/actions`), the *Bulk actions* page or
`mc events cancel|retry|replay`, after a dry run: `expectedCount` is the count the dry
run showed, and the run is refused (nothing changed) when the count moved by more than
`tolerance`. It can also be triggered here with the same params.

**Set-based, resumable, idempotent.** One statement per batch of `batch_size` events,
each committed. The run id is the action's id: every event it touches is recorded, so
clearing the task (or a retry after a crash) resumes where it stopped and never acts
twice on an event; a finished run changes nothing when re-run. Every action is in the
audit trail (who, when, filter, counts, run id): the *Audit* page of the Message Center.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, get_current_context, task

from mc_airflow.defaults import DEFAULT_ARGS, has_role
from message_center import dag_ids


@dag(
    dag_id=dag_ids.BULK_ACTION,
    dag_display_name="Bulk action",
    description="Cancel, retry or replay the events a filter selects",
    schedule=None,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=4,
    default_args=DEFAULT_ARGS,
    tags=["message-center", "execution"],
    params={
        "action": Param("cancel", type="string", enum=["cancel", "retry", "replay"],
                        title="Action", description="cancel, retry or replay."),
        "filter": Param({}, type="object", title="Filter",
                        description="instance, queue, eventType, channel, status, "
                                    "failureClass, from, to, externalIdPrefix, ids "
                                    "(at least one)."),
        "expectedCount": Param(None, type=["null", "integer"], minimum=0,
                               title="Expected count",
                               description="The dry run's count: refused if the count "
                                           "moved by more than the tolerance."),
        "tolerance": Param(0, type="integer", minimum=0, title="Tolerance",
                           description="How far the count may have moved."),
        "confirmUnknown": Param(False, type="boolean", title="Confirm unknown outcomes",
                                description="Retry failures whose outcome is unknown too: "
                                            "the recipient may get the message twice."),
        "expiration": Param(None, type=["null", "string"], title="New expiration",
                            description="ISO 8601; needed to retry events past their "
                                        "expiration (retry, replay)."),
        "user": Param("airflow", type="string", minLength=1, title="User",
                      description="Who asks for it (the audit trail; 'cancelled by ...')."),
        "batch_size": Param(1000, type="integer", minimum=1, maximum=100_000,
                            title="Batch size", description="Events per statement."),
    },
    doc_md=__doc__,
)
def mc_bulk_action_dag() -> None:
    @task(task_display_name="Run the bulk action", retries=2)
    def run_bulk_action() -> dict[str, object]:
        """Check the guard, then act batch by batch (resumes a previous try)."""
        from mc_airflow.operations import run_bulk_action as run

        context = get_current_context()
        run_ = context["dag_run"]
        return run(context["params"], run_.run_id,
                   getattr(run_, "triggering_user_name", None))

    run_bulk_action()


if has_role("execution"):  # MC_DEPLOYMENT_ROLES
    mc_bulk_action_dag()
