"""
### Processing batch events (`batchEventsProcessing`)

Adobe Campaign's *Processing batch events* technical workflow: takes the **batch** event
queue of this execution instance (`batch_event` in the `mc_execution` database) and turns
due events into delivered messages, throughput first.

Steps (task ids):

1. `split_queue` - settles crashed work (see below), then claims due events (`pending`,
   scheduled time and retry time passed) in routing batches with
   `FOR UPDATE SKIP LOCKED` and, in the same statement, links each one to the latest
   published template for its type and channel (one in the event's language first):
   **Pending delivery**, dealt round robin into `shards` shards; no template: **Event
   not taken into account** with the reason; past its expiration: **Event expired**.
   One write per event: claiming and linking in one `UPDATE` is about twice as fast as
   two.
2. `render_and_deliver` (one per shard, labelled *shard N*) - pages through the shard
   `delivery_chunk` events at a time: writes the delivery log (the ledger), renders with
   the sandboxed Jinja renderer, sends over one reused SMTP connection (`smtp_default`)
   or the SMS gateway (`sms_gateway`), records each outcome.
3. `update_event_status` - copies Sent / Ignored / Delivery failed from the delivery
   logs onto the events (incremental, like `updateEventStatus`).

Only `(claim token, shard)` travels between tasks; the claim lives on the event rows, so a
retried task resumes its own shard. Transient delivery errors (SMTP 4xx, connection
refused, timeouts) put the event back to **Pending** with exponential backoff; after
`max_tries` attempts it becomes **Event expired**. Quarantined or missing addresses give
**Ignored by the delivery**, permanent errors (SMTP 5xx, template errors) **Delivery failed**.

**Exactly once.** A message is only sent after its delivery-log row moved to `sending`
in a committed compare-and-set; two runs or a retried task never send it twice. If a
worker dies while sending, the outcome of at most `delivery_chunk` messages is unknown:
they are marked *Delivery failed (outcome unknown)* and **not resent** (never twice beats
maybe twice); no event is lost, unsent ones are processed again when their claim lease
runs out.

**Operating it.** Runs every minute (one run at a time, no catch-up); each run drains up
to `max_events_per_run` events, the next run continues. Trigger a run with other
**params** (batch size, shards, ...) for a one-off drain. Shard tasks use the
`mc_delivery` pool (concurrent SMTP connections). Watch progress in the mapped task
labels (*shard N*) and their logs (counts per outcome).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import dag, get_current_context, task

from mc_airflow.defaults import DEFAULT_ARGS, has_role
from mc_airflow.params import processing_param, processing_params
from message_center import dag_ids

KIND = "batch"

PARAMS = {
    **processing_params(
        shards=4, routing_batch_size=50_000, routing_batch_max=1_000_000, delivery_chunk=100,
        smtp_sessions=24,  # Little's law: see docs/architecture/delivery.md
        retry_backoff_seconds=60, claim_lease_seconds=1_800, sending_timeout_seconds=600,
        shards_description="Parallel delivery tasks the claimed events are split into."),
    "max_events_per_run": processing_param(
        "max_events_per_run", 200_000, title="Max events per run",
        description="Stop claiming after this many events; the next run continues."),
}


@dag(
    dag_id=dag_ids.BATCH_EVENTS_PROCESSING,
    dag_display_name="Processing batch events",
    description="Split, link, render and deliver the batch event queue (throughput first)",
    schedule=timedelta(minutes=1),
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["message-center", "execution", "batch-events"],
    params=PARAMS,
    doc_md=__doc__,
)
def batch_events_processing() -> None:
    @task(task_display_name="Split the queue and link templates")
    def split_queue() -> list[dict[str, Any]]:
        """Recover crashed work, then claim and link due events into shards in one write
        per event (ids stay in the DB; only (token, shard, count) goes to XCom)."""
        from mc_airflow.delivery import (
            execution_engine,
            processing_settings,
            reconcile_channels,
        )
        from message_center.processing import recover
        from message_center.processing import split_queue as split

        settings = processing_settings(get_current_context()["params"])
        engine = execution_engine()
        with reconcile_channels(KIND) as channels:  # the SMS gateway settles what it can
            recovered = recover(engine, settings, kinds=(KIND,),
                                reconcile=channels.reconcile)
        claims = split(engine, KIND, settings)
        print(f"recovered: {recovered.as_dict()}; linked "
              f"{sum(c.events for c in claims)} event(s) for delivery into "
              f"{len(claims)} shard(s)")
        return [claim.to_xcom() for claim in claims]

    @task(task_display_name="Render and deliver", map_index_template="{{ shard_label }}",
          pool="mc_delivery")
    def render_and_deliver(claim: dict[str, Any]) -> dict[str, int]:
        """Ledger, render, send, record - chunk by chunk over one SMTP connection."""
        from mc_airflow.delivery import (
            StopSignal,
            execution_engine,
            open_channels,
            processing_settings,
        )
        from message_center.processing import ShardClaim, deliver_shard

        context = get_current_context()
        shard = ShardClaim.from_xcom(claim)
        context["shard_label"] = f"shard {shard.shard}"  # type: ignore[literal-required]
        settings = processing_settings(context["params"])
        # StopSignal: SIGTERM or a lost supervisor ends the shard cleanly.
        with StopSignal() as should_stop, open_channels(KIND) as channels:
            stats = deliver_shard(execution_engine(), shard, settings, channels,
                                  copy_status=False, should_stop=should_stop)
        print(f"shard {shard.shard}: {stats.as_dict()}")
        return stats.as_dict()

    @task(task_display_name="Update event status", trigger_rule="all_done")
    def update_event_status() -> dict[str, int]:
        """Copy final delivery outcomes onto the events (runs even if a shard failed)."""
        from mc_airflow.delivery import copy_event_statuses

        return copy_event_statuses()

    render_and_deliver.expand(claim=split_queue()) >> update_event_status()


if has_role("execution"):  # MC_DEPLOYMENT_ROLES
    batch_events_processing()
