"""A relay that takes its time: the DAGs against an SMTP server taking 50 ms per message.

A real relay or provider answers each message in tens of milliseconds; one SMTP session
then sends at most one message per round trip, so throughput comes from many sessions
at once (``smtp_sessions`` per shard, :mod:`message_center.delivery.pool`). Measured
through the real scheduler (``airflow standalone``, the DAGs' default params), with the
bench's null SMTP sink (:mod:`bench.sinks`) switched between 0 ms and ``slow_latency``
per message in the same run:

* **batch** - a backlog of ``slow_events`` batch events, one ``batchEventsProcessing``
  run claiming all of it; the figure is messages accepted by the sink per second, from
  the first to the last one (``delivery_log.sent_at``); the same drain against the
  zero-latency sink is the bare limit. The run's wall time (split, task start-up) is in
  the note.
* **real time** - ``slow_rt_rate`` events/s pushed through the API for
  ``slow_rt_seconds``, push-to-Sent latency p99 (as the ``realtime`` stage measures it).
* **memory** - the peak RSS (VmHWM) of every Airflow task process during both.
"""

from __future__ import annotations

import os
import time

from sqlalchemy import text

from bench.bare_pool import CpuMeter, bare_pool, commit_counter
from bench.core import Context, Result, log, planned_rows
from bench.data import insert_events
from bench.realtime import (
    BATCH_DAG,
    TaskMemory,
    api,
    fail_unfinished_runs,
    latencies,
    prepare_dags,
    push_steadily,
    set_paused,
    task_names,
    wait_final,
    wait_rt_shards,
)
from bench.sinks import set_latency

BATCH_SHARDS = 4  # dags/batch_events_processing.py defaults
BATCH_SESSIONS = 24


def _drain(ctx: Context, count: int, label: str
           ) -> tuple[float, float, dict[str, int], str]:
    """One batch run draining ``count`` events: (msg/s first->last sent, run wall s,
    outcomes, CPU per message of the Airflow processes and PostgreSQL during the run)."""
    set_paused(ctx, BATCH_DAG, True)
    fail_unfinished_runs(ctx, BATCH_DAG)
    ctx.reset_execution()
    insert_events(ctx.engine(), "batch", count)
    ctx.vacuum("batch_event")
    status, body = api(ctx, "POST", f"/dags/{BATCH_DAG}/dagRuns", {
        "logical_date": None, "conf": {"max_events_per_run": count}})
    if status not in (200, 201):
        raise RuntimeError(f"cannot trigger {BATCH_DAG}: {status} {body}")
    run_id = body["dag_run_id"]
    meter = CpuMeter([ctx.processes["standalone"].pid], ctx.db_pids(),
                     commits=commit_counter(ctx.engine())).__enter__()
    load = os.getloadavg()[0]
    set_paused(ctx, BATCH_DAG, False)
    log(f"slow relay: {label}: {BATCH_DAG} run {run_id} draining {count:,} events")
    started = time.monotonic()
    cap = max(300.0, count / 50)  # a safety cap: 50 msg/s would be a failure anyway
    state = "queued"
    while time.monotonic() - started < cap:
        time.sleep(0.5)
        state = api(ctx, "GET", f"/dags/{BATCH_DAG}/dagRuns/{run_id}")[1].get("state")
        if state in ("success", "failed"):
            break
    wall = time.monotonic() - started  # trigger -> run finished (as a user waits)
    meter.__exit__(None, None, None)
    set_paused(ctx, BATCH_DAG, True)
    fail_unfinished_runs(ctx, BATCH_DAG)
    with ctx.engine().connect() as conn:
        sent, first, last = conn.execute(text(
            "SELECT count(*), extract(epoch FROM min(sent_at)), extract(epoch FROM "
            "max(sent_at)) FROM delivery_log WHERE status = 'sent'")).one()
        outcomes = {str(k): int(v) for k, v in conn.execute(text(
            "SELECT status, count(*) FROM delivery_log GROUP BY status")).all()}
    outcomes["run"] = state  # type: ignore[assignment]
    window = float(last - first) if sent and sent > 1 else 0.0
    rate = (sent - 1) / window if window > 0 else 0.0
    log(f"slow relay: {label}: {sent:,} sent, {rate:,.0f} msg/s over {window:.1f}s, "
        f"run {state} in {wall:.0f}s")
    ctx.reset_execution()
    cpu = (f"load average {load:.1f}; whole run (Airflow standalone with its tasks, and "
           f"PostgreSQL): {meter.per_message(int(sent or 0))} (context switches of the "
           "processes still alive at the end only: the task processes' are not counted)")
    log(f"slow relay: {label}: {cpu}")
    return rate, wall, outcomes, cpu


def _message(ctx: Context) -> bytes:
    """The drained events' message, rendered once (what the bare pool sends)."""
    from bench.pipeline import _sample_message

    with ctx.engine().connect() as conn:
        template = conn.execute(text(
            "SELECT sender, subject, html_body, text_body, options FROM published_template "
            "WHERE internal_name = 'orderConfirmed' AND active ORDER BY version DESC LIMIT 1"
        )).one()
    return _sample_message(template)


def slow_relay(ctx: Context) -> list[Result]:
    sizes = ctx.sizes
    latency_ms = sizes.slow_latency * 1000
    ctx.ensure_sinks()
    ctx.ensure_standalone()  # smtp_default -> the null sink, whose latency we switch
    prepare_dags(ctx)
    rows = planned_rows(sizes)["slow_relay"]
    try:
        with TaskMemory(ctx.processes["standalone"].pid) as memory:
            set_latency(ctx.null_smtp_port, 0)
            fast, fast_wall, fast_outcomes, fast_cpu = _drain(ctx, sizes.slow_events,
                                                              "0 ms relay")
            set_latency(ctx.null_smtp_port, sizes.slow_latency)
            slow, slow_wall, slow_outcomes, slow_cpu = _drain(
                ctx, sizes.slow_events, f"{latency_ms:g} ms relay")
            message = _message(ctx)
            bare_slow = bare_pool(ctx.null_smtp_port, message, sessions=BATCH_SESSIONS,
                                  processes=BATCH_SHARDS, count=sizes.slow_events)
            set_latency(ctx.null_smtp_port, 0)
            bare_fast = bare_pool(ctx.null_smtp_port, message, sessions=BATCH_SESSIONS,
                                  processes=BATCH_SHARDS, count=sizes.slow_events)
            set_latency(ctx.null_smtp_port, sizes.slow_latency)
            log(f"slow relay: bare pool ({BATCH_SHARDS} x {BATCH_SESSIONS} sessions, no "
                f"database): {bare_slow:,.0f} msg/s ({latency_ms:g} ms), {bare_fast:,.0f} "
                "msg/s (0 ms)")
            wait_rt_shards(ctx, 2)
            warm = push_steadily(ctx, 10, 0.1, first=20_000_000)
            wait_final(ctx, list(warm), timeout=120)
            log(f"slow relay: pushing {sizes.slow_rt_rate:g} real-time events/s for "
                f"{sizes.slow_rt_seconds:g}s")
            pushed = push_steadily(ctx, sizes.slow_rt_rate, sizes.slow_rt_seconds)
            wait_final(ctx, list(pushed), timeout=120)
            real = latencies(ctx, pushed)
    finally:
        set_latency(ctx.null_smtp_port, 0)  # the other stages expect a zero-latency sink
    ctx.reset_execution()
    names = task_names(ctx)
    top, lightest = memory.top(names), memory.lightest(names)
    p99 = real.p(99)
    (batch_figure, batch_target), (rt_figure, rt_target), (mem_figure, mem_target) = rows
    batch = Result(
        batch_figure, batch_target, slow, "msg/s",
        slow >= 1000 and slow >= 0.85 * fast and slow_outcomes.get("sent") == sizes.slow_events,
        fast, "same DAG, 0 ms relay",
        note=(f"{sizes.slow_events:,} events, one {BATCH_DAG} run with its default params "
              f"({BATCH_SHARDS} shards x {BATCH_SESSIONS} SMTP sessions); msg/s = messages "
              f"accepted by the relay from the first to the last; from the trigger to the "
              f"run's end (scheduling, split, task start-up, updateEventStatus) "
              f"{slow_wall:.0f}s ({latency_ms:g} ms relay) vs {fast_wall:.0f}s (0 ms); "
              f"outcomes {slow_outcomes} vs {fast_outcomes}; {latency_ms:g} ms relay: "
              f"{slow_cpu}; 0 ms relay: {fast_cpu}; sink: bench.sinks null sink (Python); "
              f"bare pool ({BATCH_SHARDS} processes x {BATCH_SESSIONS} SMTP sessions, "
              f"the rendered message, no database): {bare_slow:,.0f} msg/s through the "
              f"{latency_ms:g} ms relay ({slow / bare_slow:.0%}), {bare_fast:,.0f} msg/s "
              f"through the 0 ms one ({fast / bare_fast:.0%})"))
    rt = Result(rt_figure, rt_target, p99, "ms", None if p99 is None else p99 <= 2000,
                latency_ms, "the relay's own latency", higher_is_better=False,
                note=(f"{real.pushed:,} pushed through the API, outcomes {real.statuses}, "
                      f"p50 {real.p(50) or 0:.0f} ms; rtEventsProcessing with its default "
                      "params (2 shards x 16 SMTP sessions)"))
    mem = Result(mem_figure, mem_target, top[0] if top else None, "MB",
                 None if top is None else top[0] <= 300,
                 lightest[0] if lightest else None, "lightest task", higher_is_better=False,
                 note=(f"biggest: {top[1]}; " if top else "") +
                 f"{len(memory.peaks)} task process(es) watched (VmHWM)")
    return [batch, rt, mem]
