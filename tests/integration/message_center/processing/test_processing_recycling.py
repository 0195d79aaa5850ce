"""Event recycling end to end at the domain level: a real SMS gateway on loopback answers
a hard error (unknown number), real PostgreSQL records it and, in the same statement,
creates the e-mail fallback event; the real SMTP sink receives that e-mail exactly once,
whatever is re-run (backfills, copies) and when a worker is killed mid-way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from processing_factory import delivery_logs, events, insert_events, publish_templates
from sqlalchemy import text

from message_center import state
from message_center.archiving import archive_window
from message_center.delivery.channels import Channels
from message_center.delivery.sms import SmsSettings
from message_center.delivery.smtp import SmtpSettings
from message_center.delivery.suppression import suppress
from message_center.events import get_event
from message_center.ids import to_public
from message_center.lookup import LiveSource, event_detail
from message_center.processing import ProcessingSettings, deliver_shard, recover, split_queue
from message_center.publishing import TemplateContent
from message_center.reporting.reports import ReportFilter, service_level
from message_center.reporting.statistics import refresh_statistics
from message_center.status_sync import sync_event_statuses

SETTINGS = ProcessingSettings(shards=1, delivery_chunk=10, retry_backoff_seconds=0,
                              retry_backoff_max_seconds=0, max_tries=2)
FALLBACK = {"channel": "email", "template": "otpMail",
            "after": ["hard", "retries_exhausted", "quarantined"]}
OTP_SMS = TemplateContent(
    internal_name="otpSms", label="One-time code", event_type="OTP", channel="sms",
    version=1, sender="Shop", sms_body="Your code is {{ code }}", on_failure=FALLBACK)
OTP_MAIL = TemplateContent(
    internal_name="otpMail", label="One-time code by e-mail", event_type="OTP_MAIL",
    channel="email", version=1, sender="Shop <shop@example.test>",
    subject="Your code", html_body="<p>Your code is {{ code }}</p>",
    text_body="Your code is {{ code }}")


@pytest.fixture
def channels(test_deployment, sms_sink):
    with Channels(SmtpSettings(port=test_deployment.smtp_port),
                  SmsSettings(base_url=sms_sink.url, sender="Shop"), kind="batch") as chans:
        yield chans


def drain(engine, channels, *, copy_status=False):
    for claim in split_queue(engine, "batch", SETTINGS):
        deliver_shard(engine, claim, SETTINGS, channels, copy_status=copy_status)
    recover(engine, SETTINGS, kinds=("batch",))
    sync_event_statuses(engine)


def sms_event(engine, number, email="user@example.test"):
    return insert_events(engine, "batch", 1, type="OTP", email=email, mobile_phone=number,
                         wished_channel="sms", ctx={"code": "4321"})[0]


def recycled_from(engine, event_id):
    return [e for e in events(engine, "batch") if e["recycled_from"] == event_id]


def links(engine):
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(text(
            "SELECT * FROM event_recycling ORDER BY event_id")).mappings()]


def mails_to(smtp_sink, address):
    return [m for m in smtp_sink.messages() if str(m["To"]) == address]


@pytest.mark.parametrize("copy_status", [True, False], ids=["recorder", "status-sync"])
def test_hard_sms_failure_goes_out_once_as_email(execution_db, smtp_sink, sms_sink, channels,
                                                  copy_status):
    publish_templates(execution_db, OTP_SMS, OTP_MAIL)
    sms_sink.script("+33600000404", "404 unknown_subscriber")
    first = sms_event(execution_db, "+33600000404", "ada@example.test")
    fine = sms_event(execution_db, "+33600000200", "bob@example.test")
    drain(execution_db, channels, copy_status=copy_status)

    assert events(execution_db, "batch", [first])[0]["status"] == "failed"
    [fallback] = recycled_from(execution_db, first)
    assert (fallback["wished_channel"], fallback["type"], fallback["email"],
            fallback["ctx"]) == ("email", "OTP_MAIL", "ada@example.test", {"code": "4321"})
    assert recycled_from(execution_db, fine) == []  # sent: nothing to recycle
    drain(execution_db, channels, copy_status=copy_status)  # the fallback is processed
    fallback = events(execution_db, "batch", [fallback["id"]])[0]
    assert (fallback["status"], fallback["template_name"]) == ("sent", "otpMail")
    [mail] = mails_to(smtp_sink, "ada@example.test")
    assert "Your code is 4321" in mail.get_body(("plain",)).get_content()

    # a backfill of updateEventStatus and a re-copy write nothing twice
    with execution_db.begin() as conn:
        state.copy_statuses_between(conn, "batch", None, conn.execute(
            text("SELECT now()")).scalar_one())
        state.copy_statuses_for_events(conn, "batch", [first])
    drain(execution_db, channels)
    assert len(recycled_from(execution_db, first)) == 1
    assert len(mails_to(smtp_sink, "ada@example.test")) == 1
    [link] = links(execution_db)
    assert (link["event_id"], link["recycled_id"], link["outcome"]) == (
        first, fallback["id"], "hard")

    with execution_db.connect() as conn:  # what GET /message-center/v1/events/{id} shows
        shown = get_event(conn, to_public(first))
        back = get_event(conn, to_public(fallback["id"]))
    assert shown["recycledTo"] == to_public(fallback["id"])
    assert back["recycledFrom"] == to_public(first)


def test_no_fallback_address_is_not_recycled_and_says_so(execution_db, smtp_sink, sms_sink,
                                                         channels):
    publish_templates(execution_db, OTP_SMS, OTP_MAIL)
    sms_sink.script("+33600000405", "404 unknown_subscriber")
    first = sms_event(execution_db, "+33600000405", email=None)
    drain(execution_db, channels)
    assert recycled_from(execution_db, first) == []
    [link] = links(execution_db)
    assert link["recycled_id"] is None
    assert link["reason"] == "not recycled: no email address on the event"
    with execution_db.connect() as conn:
        shown = get_event(conn, to_public(first))
    assert shown["recycledTo"] is None
    assert shown["recycling"] == "not recycled: no email address on the event"


def test_quarantined_and_exhausted_are_recycled_unknown_is_not(execution_db, smtp_sink,
                                                               sms_sink, channels):
    publish_templates(execution_db, OTP_SMS, OTP_MAIL)
    with execution_db.begin() as conn:  # a number in quarantine
        conn.execute(text("INSERT INTO quarantine (channel, address, reason) "
                          "VALUES ('sms', '+33600000406', 'hard bounce')"))
    sms_sink.script("+33600000503", "always 503")  # transient until the tries run out
    quarantined = sms_event(execution_db, "+33600000406", "q@example.test")
    exhausted = sms_event(execution_db, "+33600000503", "x@example.test")
    for _ in range(SETTINGS.max_tries + 1):
        drain(execution_db, channels)
    assert events(execution_db, "batch", [quarantined])[0]["status"] == "ignored"
    assert events(execution_db, "batch", [exhausted])[0]["status"] == "expired"
    outcomes = {link["event_id"]: link["outcome"] for link in links(execution_db)}
    assert outcomes == {quarantined: "quarantined", exhausted: "retries_exhausted"}
    assert len(mails_to(smtp_sink, "q@example.test")) == 1
    assert len(mails_to(smtp_sink, "x@example.test")) == 1

    # an outcome unknown (the worker died after handing it) is never recycled
    unknown = sms_event(execution_db, "+33600000201", "u@example.test")
    with execution_db.begin() as conn:
        conn.execute(text("""
            INSERT INTO delivery_log (id, event_kind, event_id, channel, address, status,
                                      attempts, sending_started, template_name,
                                      template_version)
            VALUES (:id, 'batch', :id, 'sms', '+33600000201', 'sending', 1,
                    now() - interval '1 day', 'otpSms', 1)"""), {"id": unknown})
        conn.execute(text("UPDATE batch_event SET status = 'pending_delivery', "
                          "template_name = 'otpSms', template_version = 1, "
                          "delivery_log_id = :id WHERE id = :id"), {"id": unknown})
    recover(execution_db, SETTINGS, kinds=("batch",))
    sync_event_statuses(execution_db)
    assert events(execution_db, "batch", [unknown])[0]["status"] == "failed"
    assert recycled_from(execution_db, unknown) == []


def test_a_recycled_event_is_never_recycled_back(execution_db, smtp_sink, sms_sink, channels):
    looping_mail = TemplateContent(**{**OTP_MAIL.__dict__, "on_failure": {
        "channel": "sms", "template": "otpSms", "after": ["hard"]}})
    publish_templates(execution_db, OTP_SMS, looping_mail)
    sms_sink.script("+33600000407", "404 unknown_subscriber")
    smtp_sink.script("gone@example.test", "550 5.1.1 <gone@example.test>: user unknown")
    first = sms_event(execution_db, "+33600000407", "gone@example.test")
    drain(execution_db, channels)
    [fallback] = recycled_from(execution_db, first)
    drain(execution_db, channels)
    assert events(execution_db, "batch", [fallback["id"]])[0]["status"] == "failed"
    assert recycled_from(execution_db, fallback["id"]) == []
    assert len(events(execution_db, "batch")) == 2


KILLED_COPY = textwrap.dedent("""
    import sys, time
    from message_center import state
    from message_center.db import engine_for
    engine = engine_for(sys.argv[1])
    with engine.begin() as conn:
        copied = state.copy_statuses_for_events(conn, "batch", [int(sys.argv[2])])
        print(copied, flush=True)
        time.sleep(600)   # killed here: the final status is written, not committed
""")


def test_a_kill_between_failure_and_recycling_creates_it_once(execution_db, smtp_sink,
                                                             sms_sink, channels,
                                                             test_deployment):
    publish_templates(execution_db, OTP_SMS, OTP_MAIL)
    sms_sink.script("+33600000408", "404 unknown_subscriber")
    first = sms_event(execution_db, "+33600000408", "kill@example.test")
    for claim in split_queue(execution_db, "batch", SETTINGS):  # the ledger says failed;
        deliver_shard(execution_db, claim, SETTINGS, channels, copy_status=False)
    assert events(execution_db, "batch", [first])[0]["status"] == "pending_delivery"
    [log] = delivery_logs(execution_db)
    assert (log["status"], log["failure_class"]) == ("failed", "hard")

    # a worker copies the final status and is killed before it commits
    worker = subprocess.Popen(
        [sys.executable, "-c", KILLED_COPY, test_deployment.database_url("execution"),
         str(first)], stdout=subprocess.PIPE, env=os.environ.copy())
    assert worker.stdout is not None and worker.stdout.readline().strip() == b"1"
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert events(execution_db, "batch", [first])[0]["status"] == "pending_delivery"
    assert recycled_from(execution_db, first) == [] and links(execution_db) == []

    sync_event_statuses(execution_db)  # the next run (its retry) does both, once
    sync_event_statuses(execution_db)
    assert events(execution_db, "batch", [first])[0]["status"] == "failed"
    assert len(recycled_from(execution_db, first)) == 1
    drain(execution_db, channels)
    drain(execution_db, channels)
    assert len(mails_to(smtp_sink, "kill@example.test")) == 1


def test_archive_lookup_and_reports_keep_the_link(execution_db, control_db, smtp_sink,
                                                  sms_sink, channels):
    publish_templates(execution_db, OTP_SMS, OTP_MAIL)
    sms_sink.script("+33600000409", "404 unknown_subscriber")
    first = sms_event(execution_db, "+33600000409", "arch@example.test")
    drain(execution_db, channels, copy_status=True)
    drain(execution_db, channels, copy_status=True)
    [fallback] = recycled_from(execution_db, first)
    now = datetime.now(UTC)
    window = (now - timedelta(hours=2), now + timedelta(minutes=1))
    archive_window(execution_db, control_db, 0, *window)
    refresh_statistics(control_db, 0, window=window)

    live = [LiveSource("mcExec", "Execution instance", execution_db, cell_id=0)]
    for sources in (live, []):  # live, then from the archive only
        shown = event_detail(to_public(first), sources, control_db)
        back = event_detail(to_public(fallback["id"]), sources, control_db)
        assert shown is not None and back is not None
        assert shown["recycledTo"] == to_public(fallback["id"])
        assert back["recycledFrom"] == to_public(first)
        assert (shown["channel"], back["channel"], back["status"]) == ("sms", "email", "sent")

    with control_db.connect() as conn:
        report = service_level(conn, ReportFilter(
            start=window[0].replace(minute=0, second=0, microsecond=0),
            end=window[1].replace(minute=0, second=0, microsecond=0) + timedelta(hours=1),
        )).to_dict()
    assert report["recycled"] == {"finished": 1, "sent": 1,
                                  "byChannel": {"email": {"finished": 1, "sent": 1}}}


def test_a_hard_bounce_after_sent_is_recycled_once(execution_db, smtp_sink, sms_sink,
                                                   channels):
    mail = TemplateContent(**{**OTP_MAIL.__dict__, "event_type": "OTP", "on_failure": {
        "channel": "sms", "template": "otpText", "after": ["hard"]}})
    text_sms = TemplateContent(**{**OTP_SMS.__dict__, "internal_name": "otpText",
                                  "event_type": "OTP_TEXT", "on_failure": None})
    publish_templates(execution_db, mail, text_sms)
    [first] = insert_events(execution_db, "batch", 1, type="OTP", email="late@example.test",
                            mobile_phone="+33600000410", ctx={"code": "777"})
    drain(execution_db, channels)
    assert events(execution_db, "batch", [first])[0]["status"] == "sent"
    [log] = delivery_logs(execution_db)
    for _ in range(2):  # the bounce mailbox read twice
        with execution_db.begin() as conn:
            state.fail_after_bounce(conn, log_ids=[log["id"]], errors=["550 user unknown"],
                                    classes=["hard"], reasons=["user_unknown"])
    assert events(execution_db, "batch", [first])[0]["status"] == "failed"
    [fallback] = recycled_from(execution_db, first)
    assert (fallback["wished_channel"], fallback["type"]) == ("sms", "OTP_TEXT")
    drain(execution_db, channels)
    assert [m["to"] for m in sms_sink.messages()] == ["+33600000410"]


def test_an_address_that_unsubscribed_is_not_recycled(execution_db, smtp_sink, sms_sink,
                                                      channels):
    """Ignored because the number unsubscribed from the template's category: the recipient
    asked not to get these messages, so no e-mail goes out in its place."""
    codes = replace(OTP_SMS, options={"unsubscribe": {"category": "codes"}})
    publish_templates(execution_db, codes, OTP_MAIL)
    with execution_db.begin() as conn:
        suppress(conn, "sms", "+33600000407", "codes")
    first = sms_event(execution_db, "+33600000407", "unsub@example.test")
    drain(execution_db, channels)
    assert events(execution_db, "batch", [first])[0]["status"] == "ignored"
    assert recycled_from(execution_db, first) == []
    assert [link for link in links(execution_db) if link["recycled_id"] is not None] == []
    assert mails_to(smtp_sink, "unsub@example.test") == []
