"""
### Delivery-status webhooks (`mcWebhooks`)

Execution instance. Sends the **webhook outbox** of this instance (`webhook_outbox` in
`mc_execution`): one signed HTTP POST per status change of an event (`event.sent`,
`event.failed`, `event.ignored`, `event.not_taken_into_account`, `event.expired`,
`event.bounced`) to every subscribed endpoint. The messages were written by the
processing in the same transaction as the change they report: a message exists exactly
when its change committed.

Task `dispatch` loops for `loop_seconds`:

- one lane per enabled endpoint, each with its own caps (`maxInFlight`, default 4
  requests at once; `ratePerSecond`, default 50), so a slow receiver only slows its own
  messages; a lane claims its next messages while requests are in flight, starts a
  request the moment one ends and records the outcomes in one statement per write;
- [Standard Webhooks](https://www.standardwebhooks.com/) headers (`webhook-id`,
  `webhook-timestamp`, `webhook-signature`), signed with the `standardwebhooks` library;
  the `webhook-id` is the same on every retry and replay (the receiver's dedupe key);
- per event, a later status is never sent before an earlier one was delivered or given up;
- 2xx: delivered. 410: failed and the endpoint disabled. Anything else (or no answer):
  retried after 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (+-10 % jitter; a longer
  `Retry-After` wins), then failed (replay it from the Webhooks page or
  `POST /message-center/v1/webhooks/{id}/replay`). An endpoint failing for 5 days is
  disabled with the reason;
- every URL is checked against server-side request forgery (its rules whenever the
  subscriptions are read, every resolved address at every connect)
  (`MC_WEBHOOK_ALLOWED_HOSTS` lists hosts that may be loopback or private), no redirect
  is followed, only the first KiB of an answer is kept.

A commit that wrote messages wakes it at once (PostgreSQL `NOTIFY mc_webhooks`); it also
polls every `poll_seconds`. **Continuous**, one active run: pause the DAG to stop
sending (messages keep queuing, nothing is lost); a killed run's messages are sent again
by the next one, with the same ids. Settings: `MC_WEBHOOK_SCHEDULE` (comma-separated
seconds), `MC_WEBHOOK_TIMEOUT`, `MC_WEBHOOK_MAX_IN_FLIGHT`, `MC_WEBHOOK_RATE`,
`MC_WEBHOOK_DISABLE_AFTER_SECONDS`.
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import Param, dag, get_current_context, task

from mc_airflow.defaults import DEFAULT_ARGS, has_role
from message_center import dag_ids

PARAMS = {
    "loop_seconds": Param(
        3_600, type="number", minimum=0, maximum=86_400, title="Loop duration (s)",
        description="How long the dispatcher runs before the run ends and the next starts."),
    "poll_seconds": Param(
        1.0, type="number", minimum=0.05, maximum=60, title="Poll interval (s)",
        description="Longest sleep without a NOTIFY (retries that became due)."),
}


@dag(
    dag_id=dag_ids.WEBHOOKS,
    dag_display_name="Delivery-status webhooks",
    description="Continuously send the webhook outbox (signed, retried, in order per event)",
    schedule="@continuous",
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["message-center", "execution", "webhooks"],
    params=PARAMS,
    doc_md=__doc__,
)
def mc_webhooks() -> None:
    @task(task_display_name="Send the webhook outbox")
    def dispatch() -> dict[str, Any]:
        """Run the dispatcher for `loop_seconds` (see the DAG docs)."""
        from mc_airflow.delivery import StopSignal
        from mc_airflow.webhooks import FernetBox, execution_engine
        from message_center.webhooks.dispatcher import DispatchSettings, run_dispatcher
        from message_center.webhooks.model import allowed_hosts

        params = get_current_context()["params"]
        settings = DispatchSettings.from_env(poll_seconds=float(params["poll_seconds"]))
        with StopSignal() as should_stop:
            stats = run_dispatcher(execution_engine(), settings, FernetBox(),
                                   allowed_hosts(), loop_seconds=float(params["loop_seconds"]),
                                   should_stop=should_stop)
        print(f"webhooks: {stats.as_dict()}")
        return stats.as_dict()

    dispatch()


if has_role("execution"):  # MC_DEPLOYMENT_ROLES
    mc_webhooks()
