"""The processing stages on the execution database, each next to its bare SQL / SMTP limit:
split + link, render + deliver, updateEventStatus, archiving of one account.

They call the same domain functions the DAG tasks call (``message_center.processing``,
``status_sync``, ``archiving``), in this process, with no Airflow around them: what is
measured is the work, not the scheduler (the real-time stage measures the scheduler).
"""

from __future__ import annotations

import io
import os
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text

from bench.bare_pool import CpuMeter, bare_pool, commit_counter
from bench.core import Context, Result, log, planned_rows, stopwatch
from bench.data import ITEMS, count_by_status, insert_events, insert_final_delivery_logs
from message_center import archiving
from message_center.claims import ShardClaim
from message_center.delivery.channels import Channels
from message_center.delivery.smtp import SmtpSettings, build_email
from message_center.processing import ProcessingSettings, deliver_shard, split_queue
from message_center.rendering import event_variables, render_message
from message_center.status_sync import sync_event_statuses

FROM = "Message Center <no-reply@message-center.local>"


def _timed_rollback(ctx: Context, sql: str) -> tuple[float, int]:
    """Run ``sql`` in a transaction, time it, roll it back (the rows stay as they were)."""
    with ctx.engine().connect() as conn:
        transaction = conn.begin()
        with stopwatch() as elapsed:
            rows = conn.execute(text(sql)).rowcount
        transaction.rollback()
    return elapsed(), rows


BARE_LINK = """
    UPDATE batch_event e SET status = 'pending_delivery', template_name = t.internal_name,
           template_version = t.version, claim_token = 1, claim_shard = 0
    FROM published_template t
    WHERE t.active AND t.event_type = e.type AND t.channel = e.wished_channel
      AND e.status = 'pending'
"""


def split_link(ctx: Context) -> list[Result]:
    """Claim due batch events into shards and link them to their templates."""
    count = ctx.sizes.split_events
    engine = ctx.engine()
    ctx.reset_execution()
    log(f"split+link: building {count:,} pending batch events")
    insert_events(engine, "batch", count)
    ctx.vacuum("batch_event")
    bare_seconds, bare_rows = _timed_rollback(ctx, BARE_LINK)
    ctx.vacuum("batch_event")
    # The batch DAG's defaults: 50,000-event routing batches, 4 shards.
    settings = ProcessingSettings(routing_batch_size=50_000, max_events_per_run=max(count, 1))
    with stopwatch() as elapsed:  # one statement claims and links each routing batch
        claims = split_queue(engine, "batch", settings)
    seconds = elapsed()
    linked = sum(claim.events for claim in claims)
    rate, bare = linked / seconds, bare_rows / bare_seconds
    ctx.reset_execution()
    note = (f"{linked:,} of {count:,} events linked: claim + link in one statement per "
            f"routing batch of {settings.routing_batch_size:,} ({settings.shards} shards), "
            f"{seconds:.2f}s; bare = one UPDATE ... FROM published_template on the same rows")
    ((figure, target),) = planned_rows(ctx.sizes)["split_link"]
    ok = rate >= 50_000 and rate >= bare / 2 and linked == count
    return [Result(figure, target, rate, "events/s", ok, bare, "bare UPDATE ... FROM", note=note)]


def _prepare_linked(ctx: Context, count: int) -> tuple[ShardClaim, ProcessingSettings]:
    engine = ctx.engine()
    ctx.reset_execution()
    insert_events(engine, "batch", count)
    settings = ProcessingSettings(shards=1, max_events_per_run=max(count, 1))
    claims = split_queue(engine, "batch", settings)
    if len(claims) != 1 or claims[0].events != count:
        raise RuntimeError(f"expected one shard of {count} linked events, got {claims} "
                           "(is another batchEventsProcessing consuming this database?)")
    ctx.vacuum("batch_event")
    return claims[0], settings


def _sample_message(template: Any) -> bytes:
    """The message the bare loop sends: the same template and ctx, rendered once."""
    variables = event_variables({"type": "ORDER_CONFIRMED", "email": "c@example.com",
                                 "ctx": {"firstName": "Jane", "orderId": "A-1", "total": 59.9,
                                         "currency": "EUR", "items": ITEMS}})
    rendered = render_message(template.subject, template.html_body, template.text_body,
                              variables)
    _, message = build_email(log_id=1, sender=template.sender or FROM,
                             recipient="customer1@example.com", subject=rendered.subject,
                             html=rendered.html, text=rendered.text)
    return message


def _deliver(ctx: Context, count: int, port: int) -> tuple[float, dict[str, int], str]:
    """One shard of ``count`` messages over ``deliver_sessions`` sessions: (msg/s,
    outcomes, CPU per message of this process and PostgreSQL during the sending)."""
    claim, settings = _prepare_linked(ctx, count)
    settings = replace(settings, smtp_sessions=ctx.sizes.deliver_sessions)
    engine = ctx.engine()
    channels = Channels(SmtpSettings(host="127.0.0.1", port=port, from_email=FROM), None,
                        kind="batch")
    meter = CpuMeter([os.getpid()], ctx.db_pids(), app_tree=False,  # not the sinks
                     commits=commit_counter(engine))
    with channels, meter as cpu, stopwatch() as elapsed:
        stats = deliver_shard(engine, claim, settings, channels, copy_status=False)
    return stats.sent / elapsed(), stats.as_dict(), cpu.per_message(stats.sent)


def deliver(ctx: Context) -> list[Result]:
    """Render + deliver one shard vs the bare pool (the same number of SMTP sessions
    sending the rendered message, no database), against the project's sink and against
    the null sink (where the Message Center's own cost shows)."""
    count, sessions = ctx.sizes.deliver_messages, ctx.sizes.deliver_sessions
    ctx.ensure_sinks()
    with ctx.engine().connect() as conn:
        template = conn.execute(text(
            "SELECT sender, subject, html_body, text_body FROM published_template "
            "WHERE internal_name = 'orderConfirmed' AND active ORDER BY version DESC LIMIT 1"
        )).one()
    message = _sample_message(template)
    log(f"deliver: {count:,} messages to the SMTP sink (aiosmtpd, keeps .eml files)")
    load = os.getloadavg()[0]
    rate, stats, cpu = _deliver(ctx, count, ctx.smtp_port)
    ctx.clear_mail()
    bare_cpu: list[str] = []
    bare = bare_pool(ctx.smtp_port, message, sessions=sessions, count=count, cpu=bare_cpu)
    ctx.clear_mail()
    null_port, null_sink = ctx.null_smtp_port, "bench.sinks null sink (Python)"
    if ctx.smtp_sink_port is not None:
        null_port, null_sink = ctx.smtp_sink_port, "Postfix smtp-sink (C)"
    log(f"deliver: {count:,} messages to the {null_sink} (own cost per message)")
    null_load = os.getloadavg()[0]
    null_rate, null_stats, null_cpu = _deliver(ctx, count, null_port)
    null_bare = bare_pool(null_port, message, sessions=sessions, count=count, cpu=bare_cpu)
    ctx.reset_execution()
    problems = {k: v for k, v in stats.items() if k in ("failed", "retried", "unknown") and v}
    note = (f"{stats['sent']:,} of {count:,} sent, one shard, {sessions} SMTP session(s), "
            f"{len(message):,}-byte messages, load average {load:.1f}; {cpu}; bare pool = "
            f"{sessions} SMTP session(s) sending the same rendered message, no database "
            f"({bare_cpu[0]}). "
            f"Against the {null_sink} the same shard sends {null_rate:,.0f}/s vs "
            f"{null_bare:,.0f}/s bare pool ({null_rate / null_bare:.0%}), load average "
            f"{null_load:.1f}; {null_cpu}; bare pool {bare_cpu[1]}: that is the Message "
            "Center's own cost per message, without the sink's")
    if problems or null_stats["sent"] != count:
        note += f"; problems: {problems or null_stats}"
    ((figure, target),) = planned_rows(ctx.sizes)["deliver"]
    return [Result(figure, target, rate, "msg/s", rate >= 0.8 * bare and not problems, bare,
                   f"bare pool, {sessions} SMTP session(s), aiosmtpd sink", note=note)]


BARE_STATUS = """
    UPDATE batch_event e SET status = d.status, processed = d.last_modified,
           delivery_log_id = d.id,
           error_reason = CASE WHEN d.status = 'sent' THEN NULL ELSE d.error END
    FROM delivery_log d
    WHERE d.event_kind = 'batch' AND d.status IN ('sent', 'ignored', 'failed')
      AND e.id = d.event_id AND e.status = 'pending_delivery'
"""


def update_status(ctx: Context) -> list[Result]:
    """updateEventStatus (sync_event_statuses) over delivery logs written in 10 minutes."""
    count = ctx.sizes.status_events
    engine = ctx.engine()
    ctx.reset_execution()
    log(f"updateEventStatus: building {count:,} events with final delivery logs")
    insert_events(engine, "batch", count, status="pending_delivery", spread_seconds=3600)
    insert_final_delivery_logs(engine, "batch", spread_seconds=600)
    ctx.vacuum("batch_event", "delivery_log")
    bare_seconds, bare_rows = _timed_rollback(ctx, BARE_STATUS)
    ctx.vacuum("batch_event", "delivery_log")
    with stopwatch() as elapsed:
        stats = sync_event_statuses(engine)
    rate, bare = stats.total / elapsed(), bare_rows / bare_seconds
    remaining = count_by_status(engine, "batch").get("pending_delivery", 0)
    ctx.reset_execution()
    note = (f"{stats.total:,} statuses copied in {stats.batches} batch(es) of at most 50,000 "
            f"(default); bare = one UPDATE ... FROM delivery_log on the same rows")
    if remaining:
        note += f"; {remaining:,} events left pending_delivery"
    ((figure, target),) = planned_rows(ctx.sizes)["status"]
    return [Result(figure, target, rate, "events/s",
                   rate >= 100_000 and not remaining, bare, "bare UPDATE ... FROM", note=note)]


def _bare_copy(ctx: Context) -> tuple[float, int]:
    """COPY every event and delivery log out of the execution DB and into the archive."""
    events = ", ".join(archiving.EVENT_COLUMNS)
    logs = ", ".join(archiving.DELIVERY_LOG_COLUMNS)
    plan = [
        (f"SELECT 0, 'rt', {events} FROM rt_event",
         f"archived_event (cell_id, event_kind, {events})"),
        (f"SELECT 0, 'batch', {events} FROM batch_event",
         f"archived_event (cell_id, event_kind, {events})"),
        (f"SELECT 0, {logs} FROM delivery_log", f"archived_delivery_log (cell_id, {logs})"),
    ]
    source, target = ctx.engine().raw_connection(), ctx.engine("control").raw_connection()
    rows = 0
    try:
        with stopwatch() as elapsed:
            for query, table in plan:
                buffer = io.BytesIO()
                out = source.cursor()
                out.copy_expert(f"COPY ({query}) TO STDOUT", buffer)
                rows += out.rowcount
                source.commit()
                buffer.seek(0)
                target.cursor().copy_expert(f"COPY {table} FROM STDIN", buffer)
                target.commit()
    finally:
        source.close()
        target.close()
    return elapsed(), rows


def archive(ctx: Context) -> list[Result]:
    """One account's archiving run (archive_window) vs a bare COPY out and in."""
    count = ctx.sizes.archive_events
    engine = ctx.engine()
    ctx.reset_execution()
    ctx.reset_archive()
    log(f"archiving: building {count:,} events and their delivery logs")
    insert_events(engine, "rt", count // 2, status="pending_delivery", spread_seconds=3000)
    insert_events(engine, "batch", count - count // 2, status="pending_delivery",
                  spread_seconds=3000)
    for kind in ("rt", "batch"):
        insert_final_delivery_logs(engine, kind, spread_seconds=3000)
    ctx.vacuum("rt_event", "batch_event", "delivery_log")
    bare_seconds, bare_rows = _bare_copy(ctx)
    ctx.reset_archive()
    ctx.vacuum("archived_event", "archived_delivery_log", role="control")
    end = datetime.now(UTC) + timedelta(minutes=1)
    with stopwatch() as elapsed:
        report = archiving.archive_window(ctx.url("execution"), ctx.url("control"), 0,
                                          end - timedelta(hours=2), end)
    rows = sum(c.read for c in report.counts.values())
    rate, bare = rows / elapsed(), bare_rows / bare_seconds
    ctx.reset_execution()
    ctx.reset_archive()
    note = (f"{rows:,} rows ({count:,} events + their delivery logs) of one account in "
            f"{elapsed():.1f}s, chunks of {archiving.DEFAULT_CHUNK_ROWS:,}; bare = COPY TO "
            "STDOUT from the execution DB + COPY FROM STDIN into the archive tables")
    ((figure, target),) = planned_rows(ctx.sizes)["archive"]
    return [Result(figure, target, rate, "rows/s",
                   rate >= 50_000 and rows == bare_rows, bare, "bare COPY out + in",
                   note=note)]
