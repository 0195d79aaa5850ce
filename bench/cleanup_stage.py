"""The database clean-up (``cleanup`` DAG): purge rate, real-time latency while it purges,
and the Airflow metadata database after a simulated month with and without it.

* **purge rate** - ``cleanup_events`` expired (final, 40 days old) real-time events with
  their delivery logs, archived by the real archiving code, purged by the real
  :func:`message_center.cleanup.purge_execution` (archive checked row by row, batches of
  10,000, ``SKIP LOCKED``, ``VACUUM`` after). Bare limit: the same rows deleted by plain
  batched ``DELETE``s by id, no archive check, no locks, no vacuum.
* **latency** - real-time events pushed through the API at ``rt_rate``/s under the real
  scheduler (``rtEventsProcessing``), push -> Sent; first without a purge, then while the
  same purge runs (a fresh copy of the expired events). Goal: p99 at most 1.5x without.
* **Airflow metadata** - ``meta_days`` simulated days of the Message Center's DAG runs
  (what their schedules make: ``batchEventsProcessing`` and ``updateEventStatus`` every
  minute, ``mcPublishTemplates`` every 5 minutes, two archiving DAGs hourly, the real-time
  loop hourly; task instances, XComs and audit-log rows as they really write them) into
  two fresh, migrated Airflow databases. One gets, after each simulated day, Airflow's own
  ``run_cleanup`` (what ``airflow db clean`` runs) as the ``cleanup`` DAG calls it, keeping
  14 days, then a plain ``VACUUM`` standing for autovacuum; the other nothing.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, text

from bench.core import Context, Result, log, planned_rows, stopwatch
from bench.data import insert_events
from bench.realtime import (
    Latencies,
    latencies,
    measure_rt,
    prepare_dags,
    push_steadily,
    set_paused,
    wait_final,
    wait_for_dag,
    wait_rt_shards,
)
from message_center import archiving, dag_ids
from message_center.cleanup import CleanupSettings, purge_execution
from message_center.ids import NEXT_ID_SQL
from message_center.registry import ExecutionAccount, Registry

AGE = timedelta(days=40)
#: What Airflow stores in ``context_carrier`` (a trace id) on every run and task instance.
CARRIER = ('{"__var": {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-'
           'b7ad6b7169203331-01"}, "__type": "dict"}')


# --- data ---------------------------------------------------------------------------------
def build_expired(ctx: Context, count: int) -> None:
    """``count`` real-time events sent 40 days ago with their delivery logs, archived."""
    engine = ctx.engine()
    with engine.begin() as conn:  # leave the live queue alone: only old rows go
        conn.execute(text("DELETE FROM delivery_log WHERE created < now() - interval '1 day'"))
        conn.execute(text("DELETE FROM rt_event WHERE created < now() - interval '1 day'"))
    ctx.reset_archive()
    log(f"cleanup: building {count:,} expired events with their delivery logs")
    with engine.connect() as conn:
        before = conn.execute(text("SELECT coalesce(max(id), 0) FROM rt_event")).scalar()
    insert_events(engine, "rt", count, status="sent", spread_seconds=3600)
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL session_replication_role = replica"))  # keep the dates
        conn.execute(text(f"""
            WITH old AS (
                UPDATE rt_event SET created = created - :age,
                       last_modified = last_modified - :age,
                       processed = last_modified - :age + interval '50 ms'
                WHERE id > :before RETURNING id, email, last_modified),
            logs AS (
                INSERT INTO delivery_log (id, event_kind, event_id, template_name,
                    template_version, channel, address, status, attempts, provider_id,
                    created, last_modified, sending_started, sent_at)
                SELECT {NEXT_ID_SQL}, 'rt', id, 'orderConfirmed', 1, 'email', email, 'sent',
                       1, '<mc.' || id || '@shop.example>', last_modified, last_modified,
                       last_modified, last_modified FROM old
                RETURNING id, event_id)
            UPDATE rt_event e SET delivery_log_id = logs.id FROM logs
            WHERE e.id = logs.event_id"""), {"age": AGE, "before": before})
    ctx.vacuum("rt_event", "delivery_log")
    now = datetime.now(UTC)
    report = archiving.archive_window(ctx.url("execution"), ctx.url("control"), 0,
                                      now - AGE - timedelta(days=2), now - AGE + timedelta(
                                          hours=2), statistics=False)
    log(f"cleanup: archived {sum(c.read for c in report.counts.values()):,} rows")
    ctx.vacuum("archived_event", "archived_delivery_log", role="control")


MB = 1024 * 1024


def table_bytes(ctx: Context) -> int:
    with ctx.engine().connect() as conn:
        return int(conn.execute(text(
            "SELECT pg_total_relation_size('rt_event') + pg_total_relation_size('delivery_log')"
        )).scalar_one())


def purge(ctx: Context) -> tuple[float, int, int]:
    """The clean-up's execution purge as the DAG task runs it; (seconds, events, logs)."""
    registry = Registry(path=Path("bench.yaml"), accounts=[
        ExecutionAccount(name="mcExec1", label="bench", conn_id="mc_execution", cell_id=0)])
    with stopwatch() as elapsed:
        report = purge_execution(ctx.engine(), ctx.engine("control"), registry,
                                 CleanupSettings(), now=datetime.now(UTC), name="bench")
    if report.skipped:
        raise RuntimeError(f"the purge deleted nothing: {report.skipped}")
    return elapsed(), report.events, report.delivery_logs


def bare_delete(ctx: Context, batch: int = 10_000) -> tuple[float, int, int]:
    """Plain batched DELETEs of the same rows, oldest id first: no archive check, no
    locks, no vacuum."""
    events = logs = 0
    after = -(1 << 63)
    with stopwatch() as elapsed:
        while True:
            with ctx.engine().begin() as conn:
                ids = list(conn.execute(text(
                    "SELECT id FROM rt_event WHERE id > :after "
                    "AND created < now() - interval '1 day' ORDER BY id LIMIT :n"),
                    {"after": after, "n": batch}).scalars())
                if not ids:
                    break
                after = ids[-1]
                logs += conn.execute(text(
                    "DELETE FROM delivery_log WHERE event_kind = 'rt' AND event_id = ANY(:ids)"),
                    {"ids": ids}).rowcount
                events += conn.execute(text("DELETE FROM rt_event WHERE id = ANY(:ids)"),
                                       {"ids": ids}).rowcount
    return elapsed(), events, logs


# --- real-time latency while purging -----------------------------------------------------
def latency_while(ctx: Context, work: threading.Thread, cap: float) -> Latencies:
    """Push at ``rt_rate``/s, 5-second slices, as long as ``work`` runs (at most ``cap`` s);
    the latencies of those events."""
    sent: dict[int, float] = {}
    started = time.monotonic()
    work.start()
    first = 20_000_000
    while work.is_alive() and time.monotonic() - started < cap:
        batch = push_steadily(ctx, ctx.sizes.rt_rate, 5.0, first=first)
        sent.update(batch)
        first += len(batch) + 1
    work.join()
    wait_final(ctx, list(sent), timeout=60)
    return latencies(ctx, sent)


def cleanup(ctx: Context) -> list[Result]:
    count = ctx.sizes.cleanup_events
    ctx.ensure_sinks()
    ctx.ensure_standalone()
    prepare_dags(ctx)
    wait_for_dag(ctx, dag_ids.CLEANUP)
    set_paused(ctx, dag_ids.CLEANUP, True)  # its own nightly run must not purge the bench's rows
    ctx.reset_execution()
    wait_rt_shards(ctx, 2)

    build_expired(ctx, count)
    full = table_bytes(ctx)
    seconds, events, logs = purge(ctx)
    purged = table_bytes(ctx)
    log(f"cleanup: purged {events:,} events + {logs:,} logs in {seconds:.1f}s")
    build_expired(ctx, count)  # the same amount again: the freed space is reused
    refilled = table_bytes(ctx)
    bare_seconds, bare_events, bare_logs = bare_delete(ctx)
    log(f"cleanup: bare delete {bare_events:,} + {bare_logs:,} in {bare_seconds:.1f}s")
    ctx.vacuum("rt_event", "delivery_log")

    without = measure_rt(ctx, ctx.sizes.rt_seconds, "real time, no purge")
    build_expired(ctx, count)
    result: dict[str, tuple[float, int, int]] = {}
    worker = threading.Thread(target=lambda: result.update(p=purge(ctx)))
    during = latency_while(ctx, worker, cap=max(ctx.sizes.rt_seconds, 600.0))
    loaded_seconds, loaded_events, _ = result.get("p", (0.0, 0, 0))
    ctx.reset_execution()

    rows = planned_rows(ctx.sizes)["cleanup"]
    rate = events / seconds
    out = [Result(rows[0][0], rows[0][1], rate, "events/s", events == count and rate >= 10_000,
                  bare_events / bare_seconds, "plain batched DELETE by id",
                  note=(f"{events:,} events + {logs:,} delivery logs in {seconds:.1f}s "
                        f"({(events + logs) / seconds:,.0f} rows/s) incl. VACUUM; every row "
                        "checked against the control archive; batches of 10,000; bare: "
                        f"{bare_events:,} + {bare_logs:,} in {bare_seconds:.1f}s; rt_event + "
                        f"delivery_log: {full / MB:.0f} MB full, {purged / MB:.0f} MB after the "
                        f"purge and its VACUUM, {refilled / MB:.0f} MB after as many rows were "
                        "written again (the freed space is reused)"))]
    for (figure, target), q in zip(rows[1:3], (50, 99), strict=True):
        value, base = during.p(q), without.p(q)
        out.append(Result(figure, target, value, "ms",
                          None if value is None or base is None or q == 50 else
                          value <= 1.5 * base, base, "same run, no purge",
                          higher_is_better=False))
    out[1].note = (f"{during.pushed:,} events pushed while the purge of {count:,} ran "
                   f"({loaded_events:,} events in {loaded_seconds:.1f}s under load), outcomes "
                   f"{during.statuses}; without: {without.pushed:,} pushed, outcomes "
                   f"{without.statuses}; p50 has no target")
    out.append(metadata_month(ctx))
    return out


# --- the Airflow metadata database over a simulated month -----------------------------------
#: (dag_id, runs per day, [(task_id, map count, xcoms per task instance)])
SCHEDULES = (
    (dag_ids.BATCH_EVENTS_PROCESSING, 1440, [("split_queue", 1, 1),
                                             ("render_and_deliver", 4, 6),
                                             ("update_event_status", 1, 3)]),
    (dag_ids.UPDATE_EVENT_STATUS, 1440, [("update_event_status", 1, 3)]),
    (dag_ids.PUBLISH_TEMPLATES, 288, [("targets", 1, 1), ("publish_to_instance", 2, 1),
                                      ("report", 1, 1)]),
    (dag_ids.RT_EVENTS_PROCESSING, 24, [("recover_and_open_shards", 1, 1),
                                        ("link_render_deliver", 2, 6),
                                        ("update_event_status", 1, 3)]),
    (dag_ids.archiving("mcExec1"), 24, [("check_instance", 1, 2), ("archive_events", 1, 2),
                                        ("archive_delivery_logs", 1, 1),
                                        ("update_statistics", 1, 4)]),
    (dag_ids.archiving("mcExec2"), 24, [("check_instance", 1, 2), ("archive_events", 1, 2),
                                        ("archive_delivery_logs", 1, 1),
                                        ("update_statistics", 1, 4)]),
    (dag_ids.CLEANUP, 1, [("execution_instance.purge_events", 1, 1),
                          ("execution_instance.purge_idempotency_keys", 1, 1),
                          ("control_instance.purge_archive", 1, 1),
                          ("control_instance.purge_statistics", 1, 1),
                          ("airflow_metadata.clean_airflow_metadata", 1, 1)]),
)
META_TABLES = ("dag_run", "task_instance", "task_instance_history", "task_reschedule", "xcom",
               "log")


def _server_engine(ctx: Context, database: str) -> Engine:
    from message_center.db import engine_for

    return engine_for(ctx.url("airflow").rsplit("/", 1)[0] + f"/{database}")


def _fresh_airflow_db(ctx: Context, name: str, template: str | None = None) -> Engine:
    admin = _server_engine(ctx, "postgres").execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'
                          + (f' TEMPLATE "{template}"' if template else "")))
    engine = _server_engine(ctx, name)
    if template is None:
        env = {**ctx.airflow_env(), "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN":
               str(engine.url.render_as_string(hide_password=False))}
        log(f"cleanup: migrating a fresh Airflow database {name}")
        subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
                       env=env, check=True, capture_output=True, timeout=600)
    return engine


def simulate_day(engine: Engine, day: datetime, scale: float) -> None:
    """One day of the Message Center's runs, set-based, as the scheduler writes them."""
    with engine.begin() as conn:
        for dag_id, per_day, tasks in SCHEDULES:
            runs = max(1, round(per_day * scale))
            conn.execute(text("""
                INSERT INTO dag_run (dag_id, queued_at, logical_date, start_date, end_date,
                    state, run_id, run_type, triggered_by, conf, data_interval_start,
                    data_interval_end, run_after, last_scheduling_decision, log_template_id,
                    created_at, updated_at, clear_number, span_status, context_carrier)
                SELECT :dag, t, t, t + interval '1 s', t + interval '20 s', 'success',
                       'scheduled__' || to_char(t, 'YYYY-MM-DD"T"HH24:MI:SS.US+00:00'),
                       'scheduled', 'TIMETABLE', CAST('{}' AS jsonb), t - :step, t, t,
                       t + interval '20 s',
                       NULL, t, t + interval '20 s', 0, 'ended',
                       CAST(:carrier AS jsonb)
                FROM generate_series(0, :runs - 1) g,
                     LATERAL (SELECT CAST(:day AS timestamptz) + :step * g AS t) x"""),
                {"dag": dag_id, "day": day, "runs": runs, "carrier": CARRIER,
                 "step": timedelta(days=1) / runs})
            for task_id, maps, xcoms in tasks:
                conn.execute(text("""
                    WITH ti AS (
                        INSERT INTO task_instance (id, task_id, dag_id, run_id, map_index,
                            start_date, end_date, duration, state, try_number, max_tries,
                            hostname, unixname, pool, pool_slots, queue, priority_weight,
                            operator, custom_operator_name, scheduled_dttm, queued_dttm,
                            last_heartbeat_at, pid, executor_config, updated_at,
                            rendered_map_index, span_status, context_carrier,
                            task_display_name)
                        SELECT gen_random_uuid(), :task, r.dag_id, r.run_id,
                               CASE WHEN :maps > 1 THEN m ELSE -1 END, r.start_date,
                               r.end_date, 4.2, 'success', 1, 2, 'worker-1', 'airflow',
                               'default_pool', 1, 'default', 1, '_PythonDecoratedOperator',
                               '@task', r.start_date, r.start_date, r.end_date, 12345,
                               CAST('\\x80057d942e' AS bytea), r.end_date,
                               CASE WHEN :maps > 1 THEN 'shard ' || m END, 'ended',
                               CAST(:carrier AS jsonb),
                               initcap(replace(:task, '_', ' '))
                        FROM dag_run r, generate_series(0, :maps - 1) m
                        WHERE r.dag_id = :dag AND r.logical_date >= :day
                          AND r.logical_date < CAST(:day AS timestamptz) + interval '1 day'
                        RETURNING task_id, dag_id, run_id, map_index, end_date),
                    logs AS (
                        INSERT INTO log (dttm, dag_id, task_id, map_index, event, run_id,
                                         try_number, owner, extra)
                        SELECT end_date - interval '4 s' + interval '4 s' * e, dag_id,
                               task_id, map_index, ev, run_id, 1, 'message-center', NULL
                        FROM ti, unnest(ARRAY['running', 'success']) WITH ORDINALITY
                             AS x(ev, e) RETURNING 1)
                    INSERT INTO xcom (dag_run_id, task_id, map_index, key, dag_id, run_id,
                                      value, timestamp)
                    SELECT r.id, ti.task_id, ti.map_index,
                           CASE WHEN k = 1 THEN 'return_value' ELSE 'key_' || k END,
                           ti.dag_id, ti.run_id,
                           CAST('{"read": 1234, "inserted": 1200, "updated": 34}' AS jsonb),
                           ti.end_date
                    FROM ti JOIN dag_run r ON r.dag_id = ti.dag_id AND r.run_id = ti.run_id,
                         generate_series(1, :xcoms) k"""),
                    {"task": task_id, "dag": dag_id, "maps": maps, "xcoms": xcoms,
                     "day": day, "carrier": CARRIER})


def database_size(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_database_size(current_database())")).scalar())


def clean_like_the_dag(engine: Engine, before: datetime) -> None:
    """What the cleanup DAG's Airflow task runs (``airflow db clean`` = ``run_cleanup``)
    with its tables and DAG ids, against ``engine``'s database; then a plain VACUUM."""
    from airflow.utils.db_cleanup import run_cleanup
    from sqlalchemy.orm import Session

    from mc_airflow.cleanup import AIRFLOW_TABLES

    dag_ids = [dag_id for dag_id, _, _ in SCHEDULES]
    with Session(bind=engine) as session:
        run_cleanup(clean_before_timestamp=before, table_names=list(AIRFLOW_TABLES),
                    dag_ids=dag_ids, skip_archive=True, confirm=False, batch_size=10_000,
                    session=session)
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        for table in META_TABLES:
            conn.execute(text(f"VACUUM {table}"))


def metadata_month(ctx: Context) -> Result:
    days, scale = ctx.sizes.meta_days, ctx.sizes.meta_scale
    keep = 14
    prefix = ctx.deployment.database("airflow")
    without = _fresh_airflow_db(ctx, f"{prefix}_month_raw")
    with_cleanup = _fresh_airflow_db(ctx, f"{prefix}_month_clean", template=f"{prefix}_month_raw")
    empty = database_size(without)
    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(
        days=days)
    log(f"cleanup: simulating {days} days of Message Center runs (scale {scale:g})")
    import contextlib
    import io

    clean_seconds = 0.0
    for day in range(days):
        at = start + timedelta(days=day)
        simulate_day(without, at, scale)
        simulate_day(with_cleanup, at, scale)
        with stopwatch() as elapsed, contextlib.redirect_stdout(io.StringIO()):
            clean_like_the_dag(with_cleanup, at + timedelta(days=1) - timedelta(days=keep))
        clean_seconds += elapsed()
    sizes = (database_size(with_cleanup), database_size(without))
    with without.connect() as conn:
        runs, tis, xcoms = (int(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar())
                            for t in ("dag_run", "task_instance", "xcom"))
    with with_cleanup.connect() as conn:
        kept_runs = int(conn.execute(text("SELECT count(*) FROM dag_run")).scalar())
    (figure, target), = planned_rows(ctx.sizes)["cleanup"][3:]
    mb = MB
    return Result(figure, target, sizes[0] / mb, "MB", sizes[0] < sizes[1],
                  sizes[1] / mb, "same runs, no clean-up", higher_is_better=False,
                  note=(f"{days} days x {scale:g} of the schedules: {runs:,} DAG runs, "
                        f"{tis:,} task instances, {xcoms:,} XComs written; with the daily "
                        f"clean-up (keep {keep} days, then VACUUM standing for autovacuum) "
                        f"{kept_runs:,} runs remain; empty migrated database "
                        f"{empty / mb:.0f} MB; the {days} daily cleans took "
                        f"{clean_seconds:.0f}s in all"))
