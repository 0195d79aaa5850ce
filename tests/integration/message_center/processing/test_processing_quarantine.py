"""Deliverability end to end at the domain level: a real SMTP server and a real SMS gateway
on loopback answer each class of code for chosen addresses; real PostgreSQL records the
class on the delivery log and quarantines by the rules; the next event for a quarantined
address ends *Ignored by the delivery* with the reason; a release sends again."""

from __future__ import annotations

import pytest
from processing_factory import (
    SMS_TEMPLATE,
    delivery_logs,
    events,
    insert_events,
    publish_templates,
    recipients,
)

from message_center.delivery import quarantine as q
from message_center.delivery.channels import Channels
from message_center.delivery.quarantine import ChannelRules, QuarantineRules
from message_center.delivery.sms import SmsSettings
from message_center.delivery.smtp import SmtpSettings
from message_center.events import get_event
from message_center.ids import to_public
from message_center.processing import ProcessingSettings, deliver_shard, recover, split_queue
from message_center.status_sync import sync_event_statuses

RULES = QuarantineRules(email=ChannelRules(soft_threshold=3, soft_window_days=7),
                        sms=ChannelRules(soft_threshold=2))
SETTINGS = ProcessingSettings(shards=1, delivery_chunk=10, retry_backoff_seconds=0,
                              retry_backoff_max_seconds=0, max_tries=5, quarantine=RULES)


@pytest.fixture
def channels(test_deployment, sms_sink):
    with Channels(SmtpSettings(port=test_deployment.smtp_port),
                  SmsSettings(base_url=sms_sink.url, sender="Shop"), kind="batch") as chans:
        yield chans


def drain(engine, channels, settings=SETTINGS):
    for claim in split_queue(engine, "batch", settings):
        deliver_shard(engine, claim, settings, channels, copy_status=False)
    recover(engine, settings, kinds=("batch",))
    sync_event_statuses(engine)


def one(engine, address, **kwargs):
    return insert_events(engine, "batch", 1, email=address, **kwargs)[0]


def event(engine, event_id):
    return events(engine, "batch", [event_id])[0]


def log_of(engine, event_id):
    return next(log for log in delivery_logs(engine) if log["event_id"] == event_id)


def quarantined(engine, address, channel="email"):
    with engine.connect() as conn:
        return q.get(conn, channel, address)


def test_hard_bounce_quarantines_and_the_next_event_is_ignored(execution_db, smtp_sink,
                                                               channels):
    publish_templates(execution_db)
    smtp_sink.script("hard@example.test", "550 5.1.1 <hard@example.test>: user unknown")
    first, fine = one(execution_db, "hard@example.test"), one(execution_db, "ok@example.test")
    drain(execution_db, channels)
    assert event(execution_db, first)["status"] == "failed"
    assert event(execution_db, fine)["status"] == "sent"
    log = log_of(execution_db, first)
    assert (log["failure_class"], log["failure_reason"]) == ("hard", "user_unknown")
    assert log_of(execution_db, fine)["failure_class"] is None
    record = quarantined(execution_db, "hard@example.test")
    assert record["active"] and record["delivery_log_id"] == log["id"]
    with execution_db.connect() as conn:  # what GET /message-center/v1/events/{id} shows
        delivery = get_event(conn, to_public(first))["delivery"]
    assert (delivery["failureClass"], delivery["failureReason"]) == ("hard", "user_unknown")

    second = one(execution_db, "HARD@example.test")  # same address, other case
    drain(execution_db, channels)
    row = event(execution_db, second)
    assert row["status"] == "ignored"
    assert row["error_reason"] == (
        "address is in quarantine: hard bounce (user_unknown): SMTP RCPT TO refused: "
        "550 5.1.1 <hard@example.test>: user unknown")
    assert recipients(smtp_sink) == {"ok@example.test": 1}

    with execution_db.begin() as conn:
        q.release(conn, "email", "hard@example.test", decided_by="test")
    third = one(execution_db, "hard@example.test")
    drain(execution_db, channels)
    assert event(execution_db, third)["status"] == "sent"  # a release sends again
    assert recipients(smtp_sink)["hard@example.test"] == 1


def test_soft_bounces_count_up_to_the_threshold(execution_db, smtp_sink, channels):
    publish_templates(execution_db)
    smtp_sink.script("full@example.test", "always 452 4.2.2 Mailbox full")
    event_id = one(execution_db, "full@example.test")
    for attempt in (1, 2):
        drain(execution_db, channels)
        row = event(execution_db, event_id)
        assert (row["status"], row["error_count"]) == ("pending", attempt)  # retried
        log = log_of(execution_db, event_id)
        assert (log["status"], log["failure_class"], log["failure_reason"]) == (
            "retry", "soft", "mailbox_full")
        assert quarantined(execution_db, "full@example.test") is None
    drain(execution_db, channels)  # the third soft bounce reaches the threshold
    record = quarantined(execution_db, "full@example.test")
    assert record["active"] and record["failure_class"] == "soft"
    assert record["bounce_count"] == 3
    drain(execution_db, channels)  # the next attempt of the same event is not sent
    row = event(execution_db, event_id)
    assert row["status"] == "ignored"
    assert row["error_reason"].startswith(
        "address is in quarantine: 3 soft bounces in 7 days (last: mailbox_full)")
    assert recipients(smtp_sink) == {}


def test_policy_refusals_do_not_quarantine_and_throttling_retries(execution_db, smtp_sink,
                                                                   channels):
    publish_templates(execution_db)
    smtp_sink.script("spam@example.test", "554 5.7.1 Message rejected as spam")
    smtp_sink.script("slow@example.test", "421 4.7.0 Too many connections, slow down")
    spam, slow = one(execution_db, "spam@example.test"), one(execution_db, "slow@example.test")
    drain(execution_db, channels)
    assert event(execution_db, spam)["status"] == "failed"
    assert (log_of(execution_db, spam)["failure_class"],
            log_of(execution_db, spam)["failure_reason"]) == ("policy", "refused")
    # "slow down": the session pool pauses and tries the same message again
    assert event(execution_db, slow)["status"] == "sent"
    assert log_of(execution_db, slow)["failure_class"] is None  # the last answer: sent
    assert quarantined(execution_db, "spam@example.test") is None
    assert quarantined(execution_db, "slow@example.test") is None
    again = one(execution_db, "spam@example.test")
    drain(execution_db, channels)
    assert event(execution_db, again)["status"] == "sent"
    assert recipients(smtp_sink) == {"slow@example.test": 1, "spam@example.test": 1}


def test_sms_gateway_answers_quarantine_the_number(execution_db, sms_sink, channels):
    publish_templates(execution_db, SMS_TEMPLATE)
    sms_sink.script("+33600000404", "404 unknown_subscriber")
    sms_sink.script("+33600000500", "always 400 absent_subscriber")

    def sms(number):
        return insert_events(execution_db, "batch", 1, type="OTP", email=None,
                             mobile_phone=number, wished_channel="sms",
                             ctx={"code": "1234"})[0]

    gone, absent = sms("+33600000404"), sms("+33600000500")
    drain(execution_db, channels)
    assert event(execution_db, gone)["status"] == "failed"
    assert log_of(execution_db, gone)["failure_class"] == "hard"
    assert quarantined(execution_db, "+33600000404", "sms")["active"]
    assert event(execution_db, absent)["status"] == "pending"  # soft: retried, counted
    drain(execution_db, channels)  # second soft bounce: SMS threshold is 2
    assert quarantined(execution_db, "+33600000500", "sms")["failure_class"] == "soft"
    later = sms("+33600000404")
    drain(execution_db, channels)
    assert event(execution_db, later)["status"] == "ignored"
    assert event(execution_db, absent)["status"] == "ignored"
    assert sms_sink.messages() == []
