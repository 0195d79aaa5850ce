"""Attachments (issue #28): render + deliver one shard with a generated one-page PDF per
message, and with a 100 KB attachment, next to the same messages without attachments
(msg/s, CPU per message and the ratio).

The orderConfirmed template is published again (a high version) with the attachment
declared, its original version is published back at the end. The 100 KB file is once a
static attachment of the template (the bytes stored once, with the version), once a file
given by each event (``attachments.from_event``; the bytes in ``event_attachment``, one
row per event, read by the arming statement with the event: what a pushed file costs at
sending time; the push itself is measured by the ingest stages).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import replace
from typing import Any

from sqlalchemy import text

from bench.bare_pool import CpuMeter, commit_counter
from bench.core import Context, Result, log, planned_rows, stopwatch
from bench.pipeline import FROM, _prepare_linked, configure_tracking
from message_center.attachment_rules import parse_from_event
from message_center.channels.email_attachments import render_pdf
from message_center.delivery.channels import Channels
from message_center.delivery.smtp import SmtpSettings
from message_center.processing import deliver_shard
from message_center.publishing import active_templates, publish

INVOICE = """<h1>Invoice {{ orderId }}</h1><p>Customer: {{ firstName }}</p>
<table>{% for item in items | default([]) %}<tr><td>{{ item.name }}</td>
<td>{{ item.quantity }}</td><td>{{ item.price }}</td></tr>{% endfor %}</table>
<p>Total: {{ total }} {{ currency | default('EUR') }}</p>"""
KB100 = 100 * 1024


def _static_100kb() -> dict[str, Any]:
    data = b"%PDF-1.4\n" + os.urandom(KB100 - 9)
    return {"kind": "file", "name": "terms.pdf", "content_type": "application/pdf",
            "content": base64.b64encode(data).decode("ascii"), "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


def _event_files(ctx: Context) -> None:
    """Give every linked batch event its own 100 KB file, as a push would store it."""
    data = b"%PDF-1.4\n" + os.urandom(KB100 - 9)
    meta = [{"name": "statement.pdf", "contentType": "application/pdf", "size": len(data),
             "sha256": hashlib.sha256(data).hexdigest()}]
    with ctx.engine().begin() as conn:
        conn.execute(text("UPDATE batch_event SET attachments = CAST(:m AS jsonb)"),
                     {"m": json.dumps(meta)})
        conn.execute(text("INSERT INTO event_attachment (event_kind, event_id, position, "
                          "content) SELECT 'batch', id, 0, :c FROM batch_event"), {"c": data})
    ctx.vacuum("batch_event")


def _run(ctx: Context, count: int, extras: dict[str, Any] | None,
         original: Any, event_files: bool = False) -> tuple[float, float, int, str]:
    """(msg/s, CPU ms per message, sent, CPU note) of one shard with the template's
    attachments set to ``extras`` (``event_files``: each event brings a 100 KB file)."""
    engine = ctx.engine()
    with engine.begin() as conn:
        publish(conn, replace(original, version=original.version + 1000, extras=extras))
    claim, settings = _prepare_linked(ctx, count)
    if event_files:
        _event_files(ctx)
    settings = replace(settings, smtp_sessions=ctx.sizes.deliver_sessions)
    channels = Channels(SmtpSettings(host="127.0.0.1", port=ctx.smtp_port, from_email=FROM),
                        None, kind="batch")
    meter = CpuMeter([os.getpid()], ctx.db_pids(), app_tree=False,
                     commits=commit_counter(engine))
    with channels, meter as cpu, stopwatch() as elapsed:
        stats = deliver_shard(engine, claim, settings, channels, copy_status=False)
    ctx.clear_mail()
    sent = stats.sent
    cpu_ms = (cpu.app_cpu.total + cpu.db_cpu.total) / max(sent, 1) * 1000
    return sent / elapsed(), cpu_ms, sent, cpu.per_message(sent)


def attachments(ctx: Context) -> list[Result]:
    ctx.ensure_sinks()
    configure_tracking(ctx)  # the demo template tracks: the stage also runs alone
    engine = ctx.engine()
    with engine.connect() as conn:
        original = active_templates(conn)["orderConfirmed"]
    pdf = {"attachments": {"max_message_bytes": 10 * 1024 * 1024, "files": [
        {"kind": "pdf", "name": "invoice-{{ orderId }}.pdf", "content_type": "application/pdf",
         "html": INVOICE}]}}
    static = {"attachments": {"max_message_bytes": 10 * 1024 * 1024,
                              "files": [_static_100kb()]}}
    from_event = {"attachments": {"max_message_bytes": 10 * 1024 * 1024, "files": [],
                                  "from_event": parse_from_event(True)[0]}}
    (pdf_figure, pdf_target), (kb_figure, kb_target), (ev_figure, ev_target) = \
        planned_rows(ctx.sizes)["attachments"]
    rows = []
    try:
        for figure, target, extras, count in (
                (pdf_figure, pdf_target, pdf, ctx.sizes.attach_pdf_messages),
                (kb_figure, kb_target, static, ctx.sizes.attach_messages),
                (ev_figure, ev_target, from_event, ctx.sizes.attach_messages)):
            log(f"attachments: {count:,} messages without, then with, attachments")
            base_rate, base_cpu, _, base_note = _run(ctx, count, None, original)
            rate, cpu_ms, sent, note = _run(ctx, count, extras, original,
                                            event_files=extras is from_event)
            extra = ""
            if extras is pdf:
                started = time.perf_counter()
                for _ in range(5):
                    render_pdf("<h1>Invoice A-1</h1><p>Total: 59.90 EUR</p>")
                one = (time.perf_counter() - started) / 5 * 1000
                extra = (f"; one WeasyPrint render of the same one-page invoice alone: "
                         f"{one:.1f} ms. A cache of identical PDFs would save that only "
                         "when the rendered HTML is identical across messages - an invoice "
                         "carries per-event data, so no cache is kept (a PDF independent "
                         "of the event belongs in a static file, rendered once)")
            rows.append(Result(
                figure, target, rate, "msg/s", sent == count, base_rate,
                "same messages without attachments",
                note=(f"{sent:,} of {count:,} sent, one shard; CPU/msg {cpu_ms:.2f} ms vs "
                      f"{base_cpu:.2f} ms without ({cpu_ms / max(base_cpu, 1e-9):.1f}x); "
                      f"with: {note}; without: {base_note}{extra}")))
    finally:
        with engine.begin() as conn:
            publish(conn, original)
        ctx.reset_execution()
    return rows
