"""Stages through real Airflow processes: real-time push-to-Sent latency under the real
scheduler, and task memory while the scheduler drains a large batch backlog.

* **real time** - events are pushed through the API at a steady rate for a while and
  their latency is the time from the client sending the request to the event's
  ``processed`` stamp with status ``sent`` (same host, same clock). The bare limit is
  the same loop (:func:`message_center.processing.run_realtime_shard`, as many shards
  as the DAG opens) run as plain processes next to the API server, without Airflow.
* **memory** - a backlog of batch events is inserted with SQL and one
  ``batchEventsProcessing`` run is triggered to claim all of it; every Airflow task
  process (``airflow worker -- ...``) is watched through ``/proc/<pid>/status`` VmHWM
  (the kernel's exact peak RSS of the process). Delivery goes to the null SMTP sink so
  the processing, not the sink, bounds the drain.

``python -m bench.realtime --shard N --seconds S --smtp-port P`` is the bare loop.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bench.core import Context, Result, log, percentile, planned_rows, session_members
from bench.data import event_json, insert_events
from message_center import dag_ids

RT_DAG, BATCH_DAG, STATUS_DAG = (dag_ids.RT_EVENTS_PROCESSING, dag_ids.BATCH_EVENTS_PROCESSING,
                                 dag_ids.UPDATE_EVENT_STATUS)
FINAL = ("sent", "ignored", "failed", "not_taken_into_account", "expired")
# The real-time DAG's defaults (dags/rt_events_processing.py), reused by the bare loop.
RT_DEFAULTS = {"shards": 2, "poll_seconds": 1.0, "routing_batch_size": 100,
               "delivery_chunk": 20, "smtp_sessions": 16, "retry_backoff_seconds": 30,
               "claim_lease_seconds": 300,
               "sending_timeout_seconds": 300}


# --- the REST API of Airflow -------------------------------------------------------
def api(ctx: Context, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    import httpx

    response = httpx.request(method, f"{ctx.base_url}/api/v2{path}", json=body, timeout=30,
                             headers={"Authorization": f"Bearer {ctx.token()}"})
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, response.text


def wait_for_dag(ctx: Context, dag_id: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while api(ctx, "GET", f"/dags/{dag_id}")[0] != 200:
        if time.monotonic() > deadline:
            raise RuntimeError(f"DAG {dag_id} was not parsed within {timeout:.0f}s")
        time.sleep(2)


def fail_unfinished_runs(ctx: Context, dag_id: str, before: datetime | None = None) -> int:
    """Runs left running by an earlier Airflow (its tasks are gone) would block
    max_active_runs=1 until their heartbeats time out: mark them failed. ``before``:
    only runs queued before this time (not the ones this Airflow just started)."""
    failed = 0
    for state in ("running", "queued"):
        status, body = api(ctx, "GET", f"/dags/{dag_id}/dagRuns?state={state}&limit=100")
        for run in body.get("dag_runs", []) if status == 200 else []:
            queued = run.get("queued_at") or run.get("start_date")
            if before is not None and queued and datetime.fromisoformat(
                    queued.replace("Z", "+00:00")) >= before:
                continue
            api(ctx, "PATCH", f"/dags/{dag_id}/dagRuns/{run['dag_run_id']}",
                {"state": "failed"})
            failed += 1
    return failed


def quiesce(ctx: Context, dag_id: str, timeout: float = 60) -> None:
    """Until ``dag_id`` (paused) has had no queued or running run for two checks in a
    row: a run the scheduler created just before the pause is failed too (otherwise it
    would start once the DAG is unpaused and claim events meant for the next run)."""
    deadline, quiet = time.monotonic() + timeout, 0
    while quiet < 2:
        quiet = quiet + 1 if fail_unfinished_runs(ctx, dag_id) == 0 else 0
        if time.monotonic() > deadline:
            raise RuntimeError(f"{dag_id} still has runs starting after {timeout:g}s")
        time.sleep(2)


def wait_rt_shards(ctx: Context, shards: int, timeout: float = 240) -> None:
    """Until a run of rtEventsProcessing has all its shard loops running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = api(ctx, "GET", f"/dags/{RT_DAG}/dagRuns?state=running&limit=5")
        for run in body.get("dag_runs", []) if status == 200 else []:
            _, tis = api(ctx, "GET", f"/dags/{RT_DAG}/dagRuns/{run['dag_run_id']}"
                                     "/taskInstances?limit=100")
            running = [ti for ti in tis.get("task_instances", [])
                       if ti["task_id"] == "link_render_deliver" and ti["state"] == "running"]
            if len(running) >= shards:
                return
        time.sleep(1)
    raise RuntimeError(f"{RT_DAG}: {shards} shard task(s) not running within {timeout:.0f}s")


def set_paused(ctx: Context, dag_id: str, paused: bool) -> None:
    status, body = api(ctx, "PATCH", f"/dags/{dag_id}", {"is_paused": paused})
    if status != 200:
        raise RuntimeError(f"cannot {'pause' if paused else 'unpause'} {dag_id}: {body}")


def prepare_dags(ctx: Context) -> None:
    """Once per Airflow start: the processing DAGs parsed, unpaused, no stale runs."""
    if ctx.processes["standalone"].pid in PREPARED:
        return
    started = ctx.started_at["standalone"]
    for dag_id in (RT_DAG, BATCH_DAG, STATUS_DAG):
        wait_for_dag(ctx, dag_id)
        stale = fail_unfinished_runs(ctx, dag_id, before=started)
        if stale:
            log(f"{dag_id}: {stale} run(s) left by an earlier Airflow marked failed")
        set_paused(ctx, dag_id, False)
    PREPARED.add(ctx.processes["standalone"].pid)


PREPARED: set[int] = set()


# --- pushing at a steady rate and reading latencies ---------------------------------
def push_steadily(ctx: Context, rate: float, seconds: float,
                  first: int = 0) -> dict[int, float]:
    """POST /rtEvents ``rate`` times a second for ``seconds``; returns id -> send time."""
    total = max(1, round(rate * seconds))
    sent: dict[int, float] = {}
    lock = threading.Lock()
    counter = iter(range(total))
    start = time.time() + 0.2
    headers = ctx.auth_headers()
    bodies = [json.dumps(event_json(first + i)).encode() for i in range(total)]

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", ctx.deployment.api_port, timeout=30)
        try:
            while True:
                with lock:
                    index = next(counter, None)
                if index is None:
                    return
                delay = start + index / rate - time.time()
                if delay > 0:
                    time.sleep(delay)
                stamp = time.time()
                conn.request("POST", "/message-center/v1/rtEvents", body=bodies[index],
                             headers=headers)
                response = conn.getresponse()
                answer = response.read()
                if response.status == 201:
                    with lock:
                        sent[int(json.loads(answer)["id"])] = stamp
        finally:
            conn.close()

    with ThreadPoolExecutor(4) as pool:
        for future in [pool.submit(worker) for _ in range(4)]:
            future.result()
    return sent


def wait_final(ctx: Context, ids: list[int], timeout: float) -> None:
    from message_center.ids import to_stored

    stored = [to_stored(i) for i in ids]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with ctx.engine().connect() as conn:
            done = conn.execute(text("SELECT count(*) FROM rt_event WHERE id = ANY(:ids) "
                                     "AND status = ANY(:final)"),
                                {"ids": stored, "final": list(FINAL)}).scalar_one()
        if done >= len(ids):
            return
        time.sleep(0.5)


@dataclass
class Latencies:
    seconds: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    pushed: int = 0

    @property
    def not_sent(self) -> int:
        return self.pushed - self.statuses.get("sent", 0)

    def p(self, q: float) -> float | None:
        """Percentile in ms; an event that never reached Sent counts as infinitely late."""
        if self.pushed == 0 or len(self.seconds) < self.pushed * q / 100:
            return None
        return percentile(self.seconds + [float("inf")] * self.not_sent, q) * 1000


def latencies(ctx: Context, sent: dict[int, float]) -> Latencies:
    from message_center.ids import to_stored

    result = Latencies(pushed=len(sent))
    stored = {to_stored(i): t for i, t in sent.items()}
    with ctx.engine().connect() as conn:
        rows = conn.execute(text(
            "SELECT id, status, extract(epoch FROM processed) FROM rt_event "
            "WHERE id = ANY(:ids)"), {"ids": list(stored)}).all()
    for event_id, status, processed in rows:
        result.statuses[status] = result.statuses.get(status, 0) + 1
        if status == "sent" and processed is not None:
            result.seconds.append(max(0.0, float(processed) - stored[event_id]))
    return result


def measure_rt(ctx: Context, seconds: float, label: str) -> Latencies:
    """Warm up (one event must reach Sent), then push steadily and read the latencies."""
    warm = push_steadily(ctx, 10, 0.1, first=10_000_000)
    wait_final(ctx, list(warm), timeout=300)
    warm_status = latencies(ctx, warm).statuses
    if warm_status.get("sent") != len(warm):
        raise RuntimeError(f"{label}: the warm-up event did not reach Sent: {warm_status}")
    log(f"{label}: pushing {ctx.sizes.rt_rate:g} events/s for {seconds:g}s")
    sent = push_steadily(ctx, ctx.sizes.rt_rate, seconds)
    wait_final(ctx, list(sent), timeout=60)
    return latencies(ctx, sent)


def rt_bare_loop(argv: list[str] | None = None) -> None:
    """One real-time shard loop without Airflow (the bare limit of the real-time stage)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--shard", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--smtp-port", type=int, required=True)
    parser.add_argument("--profile", default="bench")
    args = parser.parse_args(argv)
    from mc_local.localenv import deployment
    from message_center.db import engine_for
    from message_center.delivery.channels import Channels
    from message_center.delivery.smtp import SmtpSettings
    from message_center.processing import ProcessingSettings, run_realtime_shard

    settings = ProcessingSettings.from_mapping(RT_DEFAULTS)
    engine = engine_for(deployment(args.profile).database_url("execution"))
    channels = Channels(SmtpSettings(port=args.smtp_port), None, kind="rt")
    with channels:
        stats = run_realtime_shard(engine, args.shard, settings, channels,
                                   loop_seconds=args.seconds,
                                   poll_seconds=RT_DEFAULTS["poll_seconds"])
    print(json.dumps(stats.as_dict()), flush=True)


# --- memory of Airflow task processes ------------------------------------------------
def _status_kb(pid: int, key: str) -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    return 0


def _cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace").strip()
    return ""


class TaskMemory:
    """Samples the peak RSS (VmHWM) of every Airflow task process every ``interval`` s.

    The LocalExecutor's worker (``airflow worker -- LocalExecutor: <task>``) supervises a
    forked task process (``airflow worker -- <task instance id>``) that runs the task's
    code: the latter is "the task" (named through the REST API by its id).
    """

    def __init__(self, session: int, interval: float = 0.5) -> None:
        self.session, self.interval = session, interval
        self.peaks: dict[int, tuple[int, str]] = {}  # pid -> (VmHWM kB, task name)
        self.supervisor_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TaskMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        for pid in session_members(self.session):  # our Airflow only, not another's
            title = _cmdline(pid)
            if not title.startswith("airflow worker -- "):
                continue
            if "LocalExecutor" in title:
                if not title.endswith("<idle>"):
                    self.supervisor_peak = max(self.supervisor_peak, _status_kb(pid, "VmHWM"))
                continue
            name = title.removeprefix("airflow worker -- ").strip()
            peak = _status_kb(pid, "VmHWM")
            if peak > self.peaks.get(pid, (0, ""))[0]:
                self.peaks[pid] = (peak, name)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def top(self, names: dict[str, str] | None = None) -> tuple[float, str] | None:
        if not self.peaks:
            return None
        peak, name = max(self.peaks.values())
        return peak / 1024, (names or {}).get(name, name)

    def lightest(self, names: dict[str, str] | None = None) -> tuple[float, str] | None:
        if not self.peaks:
            return None
        peak, name = min(self.peaks.values())
        return peak / 1024, (names or {}).get(name, name)


def task_names(ctx: Context) -> dict[str, str]:
    """Task instance id -> ``dag.task[map index]`` (task processes are titled by TI id)."""
    names: dict[str, str] = {}
    offset = 0
    while True:
        status, body = api(ctx, "GET", "/dags/~/dagRuns/~/taskInstances"
                           f"?limit=100&offset={offset}&order_by=-start_date")
        items = body.get("task_instances", []) if status == 200 else []
        for ti in items:
            index = f"[{ti['map_index']}]" if ti.get("map_index", -1) >= 0 else ""
            names[str(ti["id"])] = f"{ti['dag_id']}.{ti['task_id']}{index}"
        offset += len(items)
        if len(items) < 100 or offset >= 2000:
            return names


def slow_queries(ctx: Context, longer_than: float = 5.0) -> list[tuple[int, float, str, str]]:
    """Statements running for more than ``longer_than`` s on the bench execution DB."""
    with ctx.engine().connect() as conn:
        rows = conn.execute(text("""
            SELECT pid, extract(epoch FROM clock_timestamp() - query_start),
                   coalesce(wait_event_type || ':' || wait_event, '-'), query
            FROM pg_stat_activity
            WHERE datname = current_database() AND pid <> pg_backend_pid()
              AND state = 'active' AND backend_type = 'client backend' AND query <> ''
              AND query_start < clock_timestamp() - make_interval(secs => :secs)
        """), {"secs": longer_than}).all()
    return [(int(pid), float(secs), str(wait), str(query)) for pid, secs, wait, query in rows]


# --- the stages ------------------------------------------------------------------------
def realtime(ctx: Context) -> list[Result]:
    """Push-to-Sent latency: bare loops next to the API server, then the real scheduler."""
    ctx.ensure_sinks()
    ctx.stop("standalone")  # the bare loops run without Airflow's scheduler around them
    ctx.ensure_api()
    ctx.reset_execution()
    shards = int(RT_DEFAULTS["shards"])
    loops = [ctx.start(f"rt_bare_loop_{shard}", [
        sys.executable, "-m", "bench.realtime", "--shard", str(shard),
        "--seconds", str(ctx.sizes.rt_bare_seconds + 330),
        "--smtp-port", str(ctx.null_smtp_port)],
        # the deployment's environment: its tracking key (the demo template tracks)
        env={**os.environ, **ctx.deployment.environment()}) for shard in range(shards)]
    try:
        bare = measure_rt(ctx, ctx.sizes.rt_bare_seconds, "real time, bare loops")
    finally:
        for loop in loops:
            ctx.stop(loop.name)
    ctx.reset_execution()

    ctx.ensure_standalone()
    prepare_dags(ctx)
    wait_rt_shards(ctx, shards)
    with TaskMemory(ctx.processes["standalone"].pid) as memory:
        real = measure_rt(ctx, ctx.sizes.rt_seconds, "real time, real scheduler")
    ctx.reset_execution()
    biggest = memory.top(task_names(ctx))

    rows = []
    for (figure, target), q, limit in zip(planned_rows(ctx.sizes)["realtime"], (50, 99),
                                          (500, 2000), strict=True):
        value = real.p(q)
        rows.append(Result(figure, target, value, "ms",
                           None if value is None else value <= limit, bare.p(q),
                           "same loops without Airflow", higher_is_better=False))
    rows[0].note = (f"{real.pushed:,} pushed, outcomes {real.statuses}; rtEventsProcessing "
                    f"with its default params ({shards} shards, LISTEN/NOTIFY wake-up), "
                    "null SMTP sink; latency = client send time -> event processed as "
                    f"Sent; bare run: {bare.pushed:,} pushed over {ctx.sizes.rt_bare_seconds:g}"
                    f" s, outcomes {bare.statuses}")
    if biggest:
        rows[0].note += f"; biggest task meanwhile: {biggest[1]}, peak RSS {biggest[0]:.0f} MB"
    return rows


def _left(ctx: Context) -> int:
    """Batch events not final yet."""
    with ctx.engine().connect() as conn:
        return int(conn.execute(text(
            "SELECT count(*) FROM batch_event WHERE status IN "
            "('pending', 'pending_delivery')")).scalar_one())


def memory(ctx: Context) -> list[Result]:
    """Peak RSS of every task while batchEventsProcessing drains a big backlog."""
    count = ctx.sizes.memory_events
    ctx.ensure_sinks()
    # Postfix's smtp-sink (C) when offered: the drain's figure is then not bounded by the
    # bench's own Python sink competing for the two cores.
    sink_port = ctx.smtp_sink_port or ctx.null_smtp_port
    sink_name = ("Postfix smtp-sink (C)" if ctx.smtp_sink_port
                 else "bench.sinks null sink (Python)")
    ctx.ensure_standalone(smtp_port=sink_port)
    prepare_dags(ctx)
    set_paused(ctx, BATCH_DAG, True)
    quiesce(ctx, BATCH_DAG)  # no scheduled run may take part of the backlog first
    ctx.reset_execution()
    log(f"memory: building a backlog of {count:,} batch events")
    insert_events(ctx.engine(), "batch", count)
    ctx.vacuum("batch_event")
    cap = ctx.sizes.memory_drain_seconds
    from bench.bare_pool import CpuMeter, bare_pool, commit_counter

    load = os.getloadavg()[0]
    meter = CpuMeter([ctx.processes["standalone"].pid], ctx.db_pids(),
                     commits=commit_counter(ctx.engine()))
    with TaskMemory(ctx.processes["standalone"].pid) as watch, meter:
        status, body = api(ctx, "POST", f"/dags/{BATCH_DAG}/dagRuns", {
            "logical_date": None, "conf": {"max_events_per_run": count},
            # Queued runs start in run_after order (max_active_runs=1): unpausing creates
            # the scheduled run of the interval that just passed, which would otherwise go
            # first and claim max_events_per_run (200,000) of the backlog.
            "run_after": (datetime.now(UTC) - timedelta(hours=1)).isoformat()})
        if status not in (200, 201):
            raise RuntimeError(f"cannot trigger {BATCH_DAG}: {status} {body}")
        run_id = body["dag_run_id"]
        set_paused(ctx, BATCH_DAG, False)
        started = time.monotonic()
        log(f"memory: {BATCH_DAG} run {run_id} draining "
            + (f"(at most {cap:g}s)" if cap else "(until done)"))
        state, left = "queued", count
        slow_seen: set[tuple[int, str]] = set()
        checked = 0.0
        while True:
            time.sleep(0.5)
            if time.monotonic() - checked >= 5:
                checked = time.monotonic()
                for pid, seconds, wait, query in slow_queries(ctx):
                    if (pid, query) not in slow_seen:
                        slow_seen.add((pid, query))
                        log(f"memory: slow query (pid {pid}, {seconds:.0f}s, wait {wait}): "
                            f"{query[:300]}")
            state = api(ctx, "GET", f"/dags/{BATCH_DAG}/dagRuns/{run_id}")[1].get("state")
            if cap and time.monotonic() - started > cap:
                break
            if state not in ("success", "failed"):
                continue  # counting reads the whole table: only once the run has ended
            left = _left(ctx)
            if left == 0:
                break
            if time.monotonic() - started > 60 and left == count:
                break  # nothing moves
        drained_seconds = time.monotonic() - started
        left = _left(ctx)
    set_paused(ctx, BATCH_DAG, True)
    fail_unfinished_runs(ctx, BATCH_DAG)
    with ctx.engine().connect() as conn:
        outcomes = dict(conn.execute(text(
            "SELECT status, count(*) FROM batch_event GROUP BY status")).all())
        sent = int(conn.execute(text(
            "SELECT count(*) FROM delivery_log WHERE status = 'sent'")).scalar_one())
        runs = int(conn.execute(text(  # each run claims with its own token
            "SELECT count(DISTINCT claim_token) FROM batch_event")).scalar_one())
    end_load = os.getloadavg()[0]
    ctx.reset_execution()
    # The bare pool: the batch DAG's sessions (4 processes x 16) sending the rendered
    # message to the same sink with no database (the drain's physical limit here).
    from bench.slow_relay import BATCH_SESSIONS, BATCH_SHARDS, _message

    bare_cpu: list[str] = []
    bare = bare_pool(sink_port, _message(ctx), sessions=BATCH_SESSIONS,
                     processes=BATCH_SHARDS, count=min(count, 200_000), cpu=bare_cpu)
    names = task_names(ctx)
    top, lightest = watch.top(names), watch.lightest(names)
    done = count - left
    note = (f"{done:,} of {count:,} events reached a final status in {drained_seconds:.0f}s "
            f"({done / drained_seconds:,.0f}/s): one {BATCH_DAG} run claiming the whole "
            f"backlog (max_events_per_run={count:,}, 4 shards) and the scheduled "
            f"{STATUS_DAG}; run state {state}; outcomes "
            f"{ {k: int(v) for k, v in outcomes.items()} }; peak task: {top[1] if top else '-'}"
            f"; {len(watch.peaks)} task process(es) watched (VmHWM); supervisors peaked at "
            f"{watch.supervisor_peak / 1024:.0f} MB")
    if left:
        note += (f"; NOT fully drained: {left:,} events left when the {cap:g}s cap was "
                 "reached (--set memory_drain_seconds=0 waits for all)")
    (figure, target), (drain_figure, drain_target) = planned_rows(ctx.sizes)["memory"]
    rate = done / drained_seconds if drained_seconds else 0.0
    drain_note = (f"{done:,} events final in {drained_seconds:.0f}s from the trigger (split, "
                  f"task start-up and updateEventStatus included), {sent:,} sent; load "
                  f"average {load:.1f} before, {end_load:.1f} after; whole run (Airflow "
                  f"standalone with its tasks, and PostgreSQL): "
                  f"{meter.per_message(sent)}; sink: {sink_name}; bare "
                  f"pool: {BATCH_SHARDS} processes x {BATCH_SESSIONS} sessions of the "
                  "project's SMTP client sending the rendered message, no database "
                  f"({bare_cpu[0]})")
    if runs != 1:
        drain_note += (f"; the backlog was claimed by {runs} runs, not one (a scheduled "
                       "run got in first): not the figure asked for")
    return [Result(figure, target, top[0] if top else None, "MB",
                   None if top is None else top[0] <= 300,
                   lightest[0] if lightest else None, "lightest task",
                   higher_is_better=False, note=note),
            Result(drain_figure, drain_target, rate, "events/s",
                   rate >= 2800 and rate >= 0.7 * bare and not left and runs == 1, bare,
                   f"bare pool, {BATCH_SHARDS} x {BATCH_SESSIONS} sessions, same sink",
                   note=drain_note)]


if __name__ == "__main__":
    rt_bare_loop()
