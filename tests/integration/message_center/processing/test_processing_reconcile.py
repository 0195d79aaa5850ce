"""Messages a dead worker was sending: the SMS gateway is asked instead of guessing.

A real SMS gateway on loopback (lookup by our reference, replay of the first answer for
a repeated ``Idempotency-Key``) and a real SMTP server: what the gateway accepted is
*sent*, what it never received is sent again (once), what nobody can tell - e-mail, or
a gateway that does not answer - stays "outcome unknown" and says how to look it up."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from conftest import free_port
from processing_factory import (
    ORDER_TEMPLATE,
    SMS_TEMPLATE,
    delivery_logs,
    events,
    expire_leases,
    insert_events,
    publish_templates,
)

from message_center.delivery.channels import Channels
from message_center.delivery.ledger import start_sending
from message_center.delivery.sms import SmsSender, SmsSettings, reference
from message_center.delivery.smtp import SmtpSettings
from message_center.processing import ProcessingSettings, deliver_shard, recover, split_queue
from message_center.state import UNKNOWN_OUTCOME, mark_handed
from message_center.status_sync import sync_event_statuses

SETTINGS = ProcessingSettings(shards=1, retry_backoff_seconds=0, retry_backoff_max_seconds=0)


def _dead_worker_mid_send(engine):
    """Two SMS and one e-mail handed to their providers by a worker that then died."""
    publish_templates(engine, ORDER_TEMPLATE, SMS_TEMPLATE)
    insert_events(engine, "batch", 2, type="OTP", wished_channel="sms", email=None,
                  mobile_phone="+3360000000{n}", ctx={"code": "C{n}"})
    insert_events(engine, "batch", 1)
    (claim,) = split_queue(engine, "batch", SETTINGS)
    with engine.begin() as conn:
        armed = start_sending(conn, claim, -(2**63), 10).to_send
        mark_handed(conn, claim, [a.log_id for a in armed])
    by_channel = {}
    for attempt in armed:
        by_channel.setdefault(attempt.channel, []).append(attempt)
    return by_channel["sms"], by_channel["email"][0]


def test_the_sms_gateway_settles_what_a_dead_worker_was_sending(execution_db, sms_sink,
                                                                smtp_sink, test_deployment):
    (accepted, never_received), email = _dead_worker_mid_send(execution_db)
    sms = SmsSettings(base_url=sms_sink.url, sender="Shop")
    with SmsSender(sms) as sender:  # the one that got through before the worker died
        assert sender.send(log_id=accepted.log_id, to=accepted.address,
                           text="Your code is C1").status == "sent"
    expire_leases(execution_db, "batch")  # the worker is long gone
    with Channels(SmtpSettings(port=test_deployment.smtp_port), sms, "batch") as channels:
        stats = recover(execution_db, SETTINGS, kinds=("batch",),
                        reconcile=channels.reconcile)
        assert (stats.reconciled, stats.unknown) == (2, 1)
        for claim in split_queue(execution_db, "batch", SETTINGS):  # the next run
            deliver_shard(execution_db, claim, SETTINGS, channels, copy_status=False)
    sync_event_statuses(execution_db)
    status = {e["id"]: e for e in events(execution_db, "batch")}
    assert status[accepted.event_id]["status"] == "sent"  # the gateway had it: not resent
    assert status[never_received.event_id]["status"] == "sent"  # sent again, once
    assert status[email.event_id]["status"] == "failed"
    assert status[email.event_id]["error_reason"] == UNKNOWN_OUTCOME
    assert "Message-ID <mc.DELIVERY_LOG_ID@" in UNKNOWN_OUTCOME  # how to look it up
    got = Counter(m["reference"] for m in sms_sink.messages())
    assert got == {reference(accepted.log_id): 1, reference(never_received.log_id): 1}
    logs = {log["id"]: log for log in delivery_logs(execution_db)}
    assert logs[accepted.log_id]["provider_id"] == sms_sink.messages()[0]["id"]
    assert smtp_sink.messages() == []  # the e-mail is not resent


def test_a_gateway_that_cannot_answer_leaves_the_outcome_unknown(execution_db):
    _dead_worker_mid_send(execution_db)
    expire_leases(execution_db, "batch")
    nobody = SmsSettings(base_url=f"http://127.0.0.1:{free_port()}", timeout=1)
    with Channels(None, nobody, "batch") as channels:
        stats = recover(execution_db, SETTINGS, kinds=("batch",),
                        reconcile=channels.reconcile)
    assert (stats.reconciled, stats.unknown) == (0, 3)
    assert {log["status"] for log in delivery_logs(execution_db)} == {"failed"}


def test_the_gateway_replays_the_first_answer_for_a_repeated_key(sms_sink):
    with SmsSender(SmsSettings(base_url=sms_sink.url)) as sender:
        first = sender.send(log_id=42, to="+33600000001", text="hello")
        again = sender.send(log_id=42, to="+33600000001", text="hello")
        assert first.status == again.status == "sent"
        assert first.provider_id == again.provider_id
        assert len(sms_sink.messages()) == 1
        assert sender.lookup(42) == first  # sent, with the provider's id
        lost = sender.lookup(43)
        assert lost is not None and lost.status == "retry"
        assert "never received mc-43" in (lost.error or "")


def test_a_lookup_only_believes_an_answer_about_its_reference(sms_sink):
    """A gateway without the lookup (a plain 404 page) cannot tell: None, not "resend"."""
    settings = replace(SmsSettings(base_url=sms_sink.url), path="/no-such-endpoint")
    with SmsSender(settings) as sender:
        assert sender.lookup(42) is None
