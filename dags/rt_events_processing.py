"""
### Processing real time events (`rtEventsProcessing`)

Adobe Campaign's *Processing real time events* technical workflow: delivers the
**real-time** event queue of this execution instance (`rt_event` in `mc_execution`) with
the lowest latency (target: 99 % of events sent within 2 s of their push).

Steps (task ids):

1. `recover_and_open_shards` - settles crashed work (unknown outcomes, stale claims)
   and opens `shards` shards (the real-time queue is not split up front: each shard
   claims its share as events arrive).
2. `link_render_deliver` (one per shard, labelled *shard N*) - loops for
   `loop_seconds`: claims its split of the due queue (`FOR UPDATE SKIP LOCKED`, at most
   `routing_batch_size` events per round) and links it to the latest published templates
   in the same statement (one write per event), renders (sandboxed Jinja), delivers over
   one reused SMTP connection or the SMS gateway, writes the delivery log and copies the
   outcome onto the event at once.
3. `update_event_status` - the incremental copy of outcomes (as `updateEventStatus`), a
   safety net.

Between rounds a shard sleeps on PostgreSQL `LISTEN mc_rt_events`: the push API's
`NOTIFY` wakes it within milliseconds; it also polls every `poll_seconds` for
scheduled events and retries that become due. Several shards share the queue through
`SKIP LOCKED`, without coordination.

**Continuous.** The DAG is `@continuous` with one active run: when the shards' loops
end, the scheduler starts the next run at once. Keep `loop_seconds` long (default one
hour) so restarts are rare; the gap between runs is a few seconds.

**Outcomes and exactly-once**: as in `batchEventsProcessing` - a message is sent only
after its delivery-log row moved to `sending` in a committed compare-and-set; after a
crash, a message whose outcome is unknown is marked *Delivery failed (outcome unknown)*
and not resent; unsent events are picked up again when their lease runs out.

**Operating it.** Pause the DAG to stop real-time delivery (events keep queuing).
Trigger a run with other **params** to change shards or the loop duration; the running
loop finishes its `loop_seconds` first (or mark its tasks success/failed to end it now:
messages in flight are recorded, the rest go back to the queue).
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import Param, dag, get_current_context, task

from mc_airflow.defaults import DEFAULT_ARGS, has_role
from mc_airflow.params import processing_params
from message_center import dag_ids

KIND = "rt"

PARAMS = {
    **processing_params(
        shards=2, routing_batch_size=100, routing_batch_max=100_000, delivery_chunk=20,
        smtp_sessions=16,
        retry_backoff_seconds=30, claim_lease_seconds=300, sending_timeout_seconds=300,
        shards_description="Parallel real-time loops (each holds one SMTP connection)."),
    "loop_seconds": Param(
        3_600, type="number", minimum=0, maximum=86_400, title="Loop duration (s)",
        description="How long each shard runs before the run ends and the next starts."),
    "poll_seconds": Param(
        1.0, type="number", minimum=0.05, maximum=60, title="Poll interval (s)",
        description="Longest sleep without a NOTIFY (scheduled events, retries)."),
}


@dag(
    dag_id=dag_ids.RT_EVENTS_PROCESSING,
    dag_display_name="Processing real time events",
    description="Continuously link, render and deliver real-time events (latency first)",
    schedule="@continuous",
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["message-center", "execution", "rt-events"],
    params=PARAMS,
    doc_md=__doc__,
)
def rt_events_processing() -> None:
    @task(task_display_name="Recover and open the shards")
    def recover_and_open_shards() -> list[int]:
        """Settle crashed work, validate params and open the shards (their numbers only)."""
        from mc_airflow.delivery import (
            execution_engine,
            processing_settings,
            reconcile_channels,
        )
        from message_center.processing import recover

        settings = processing_settings(get_current_context()["params"])
        with reconcile_channels(KIND) as channels:  # the SMS gateway settles what it can
            recovered = recover(execution_engine(), settings, kinds=(KIND,),
                                reconcile=channels.reconcile)
        print(f"recovered: {recovered.as_dict()}; opening {settings.shards} shard(s)")
        return list(range(settings.shards))

    @task(task_display_name="Link, render and deliver", map_index_template="{{ shard_label }}")
    def link_render_deliver(shard: int) -> dict[str, int]:
        """The real-time loop of one shard (claim, link, render, deliver, copy status)."""
        from mc_airflow.delivery import (
            StopSignal,
            execution_engine,
            open_channels,
            processing_settings,
        )
        from message_center.processing import run_realtime_shard

        context = get_current_context()
        context["shard_label"] = f"shard {shard}"  # type: ignore[literal-required]
        params: dict[str, Any] = context["params"]
        settings = processing_settings(params)
        # StopSignal: SIGTERM or a lost supervisor ends the loop cleanly.
        with StopSignal() as should_stop, open_channels(KIND) as channels:
            stats = run_realtime_shard(
                execution_engine(), shard, settings, channels,
                loop_seconds=float(params["loop_seconds"]),
                poll_seconds=float(params["poll_seconds"]), kind=KIND,
                should_stop=should_stop, progress=print)  # counts per outcome every minute
        print(f"shard {shard}: {stats.as_dict()}")
        return stats.as_dict()

    @task(task_display_name="Update event status", trigger_rule="all_done")
    def update_event_status() -> dict[str, int]:
        """Copy any remaining final outcomes onto events (incremental, idempotent)."""
        from mc_airflow.delivery import copy_event_statuses

        return copy_event_statuses()

    link_render_deliver.expand(shard=recover_and_open_shards()) >> update_event_status()


if has_role("execution"):  # MC_DEPLOYMENT_ROLES
    rt_events_processing()
