"""Asynchronous bounces end to end: messages really sent through the SMTP server on
loopback, real-world bounces (the corpus, re-addressed to them) dropped into a real IMAP
server (pymap), read by the bounce mailbox processing into real PostgreSQL: a Sent event
becomes Delivery failed with the bounce's reason and the address is quarantined by the
same rules; a delayed notification only counts; bad mail is reported with its reason;
a second read changes nothing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from processing_factory import delivery_logs, events, insert_events, publish_templates

from message_center.delivery import quarantine as q
from message_center.delivery.bounce_mail import (
    ImapSettings,
    MailboxError,
    imap_settings_from_connection,
    process_mailbox,
)
from message_center.delivery.channels import Channels
from message_center.delivery.quarantine import ChannelRules, QuarantineRules
from message_center.delivery.smtp import SmtpSettings
from message_center.processing import ProcessingSettings, deliver_shard, split_queue
from message_center.status_sync import sync_event_statuses

CORPUS = Path(__file__).parents[3] / "data" / "bounces" / "flufl"
RULES = QuarantineRules(email=ChannelRules(soft_threshold=2))


def bounce_of(sample: str, old_address: str, address: str, message_id: str) -> bytes:
    """A corpus bounce about one of our messages: its recipient and the Message-ID of the
    message it returns replaced (the last Message-ID in the mail: the quoted original)."""
    raw = (CORPUS / sample).read_bytes()
    raw = re.sub(re.escape(old_address).encode(), address.encode(), raw, flags=re.I)
    matches = list(re.finditer(rb"(?im)^(\s*Message-I[dD]:\s*)<[^>]+>", raw))
    if len(matches) >= 2:
        last = matches[-1]
        return raw[:last.start()] + last.group(1) + message_id.encode() + raw[last.end():]
    return raw.rstrip() + b"\n\nMessage-ID: " + message_id.encode() + b"\n"


def send(engine, port, *addresses):
    ids = [insert_events(engine, "batch", 1, email=a)[0] for a in addresses]
    settings = ProcessingSettings(shards=1, max_tries=1)
    with Channels(SmtpSettings(port=port), None, kind="batch") as channels:
        for claim in split_queue(engine, "batch", settings):
            deliver_shard(engine, claim, settings, channels, copy_status=False)
    sync_event_statuses(engine)
    return ids


@pytest.fixture
def settings(bounce_mailbox):
    return ImapSettings(host="127.0.0.1", port=bounce_mailbox.port, login=bounce_mailbox.user,
                        password=bounce_mailbox.password, use_ssl=False)


def mail_ids(sink):
    return {str(m["To"]): str(m["Message-ID"]) for m in sink.messages()}


def test_a_dsn_turns_sent_into_delivery_failed_and_quarantines(
        execution_db, smtp_sink, bounce_mailbox, settings, test_deployment):
    publish_templates(execution_db)
    gone, other = send(execution_db, test_deployment.smtp_port, "gone@example.test",
                       "fine@example.test")
    assert [e["status"] for e in events(execution_db, "batch", [gone, other])] == ["sent"] * 2
    mid = mail_ids(smtp_sink)["gone@example.test"]
    bounce_mailbox.drop(bounce_of("dsn_11.txt", "joem@example.com", "gone@example.test", mid))

    report = process_mailbox(settings, execution_db, RULES)
    assert (report.read, report.outcomes) == (1, {"failed": 1})
    row = events(execution_db, "batch", [gone])[0]
    assert row["status"] == "failed"
    assert row["error_reason"].startswith("bounced after it was sent: ")
    assert "5.1.1" in row["error_reason"]
    log = next(x for x in delivery_logs(execution_db) if x["event_id"] == gone)
    assert (log["status"], log["failure_class"], log["failure_reason"]) == (
        "failed", "hard", "user_unknown")
    with execution_db.connect() as conn:
        record = q.get(conn, "email", "gone@example.test")
    assert record["active"] and record["source"] == "bounce_mail"
    assert record["delivery_log_id"] == log["id"]
    assert events(execution_db, "batch", [other])[0]["status"] == "sent"
    assert bounce_mailbox.unseen() == 0

    # the same bounce again (a second copy): nothing changes, counted once
    bounce_mailbox.drop(bounce_of("dsn_11.txt", "joem@example.com", "gone@example.test", mid))
    again = process_mailbox(settings, execution_db, RULES)
    assert again.outcomes == {"already": 1}
    assert process_mailbox(settings, execution_db, RULES).read == 0
    with execution_db.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM bounce").scalar_one() == 1


def test_non_standard_bounces_delays_and_mail_that_cannot_be_used(
        execution_db, smtp_sink, bounce_mailbox, settings, test_deployment):
    publish_templates(execution_db)
    pf, slow = send(execution_db, test_deployment.smtp_port, "pf@example.test",
                    "slow@example.test")
    ids = mail_ids(smtp_sink)
    # Postfix's own (non-RFC 3464) bounce text, and a delayed DSN
    bounce_mailbox.drop(bounce_of("postfix_01.txt", "xxxxx@local.ie", "pf@example.test",
                                  ids["pf@example.test"]))
    bounce_mailbox.drop(bounce_of("dsn_05.txt", "userx@example.cz", "slow@example.test",
                                  ids["slow@example.test"]))
    bounce_mailbox.drop(b"From: a friend <f@example.test>\r\nSubject: thanks\r\n\r\nok!\r\n")
    bounce_mailbox.drop((CORPUS / "dsn_13.txt").read_bytes())  # someone else's bounce
    bounce_mailbox.drop(bounce_of("dsn_11.txt", "joem@example.com", "x@example.test",
                                  "<mc.99999@shop.example.test>"))  # not one of ours here
    report = process_mailbox(settings, execution_db, RULES)
    assert report.read == 5
    assert report.outcomes == {"failed": 1, "delayed": 1, "unmatched": 3}
    reasons = sorted(item.split(": ", 1)[1] for item in report.unmatched)
    assert reasons[0].startswith("Message-ID refers to no delivery log here")
    assert reasons[1].startswith("no Message Center Message-ID (<mc.ID@domain>)")
    assert reasons[2].startswith("not a bounce: no failed recipient found")
    statuses = {e["id"]: e["status"] for e in events(execution_db, "batch", [pf, slow])}
    assert statuses == {pf: "failed", slow: "sent"}  # delayed: may still arrive
    with execution_db.connect() as conn:
        assert q.get(conn, "email", "pf@example.test")["failure_class"] == "hard"
        assert q.get(conn, "email", "slow@example.test") is None  # one soft bounce of 2
        soft = conn.exec_driver_sql("SELECT failure_class, failure_reason FROM bounce "
                                    "WHERE address = 'slow@example.test'").one()
    assert tuple(soft) == ("soft", "unreachable")
    assert bounce_mailbox.unseen() == 0  # every mail handled, the unusable ones too


def test_mailbox_errors_are_clear(bounce_mailbox, execution_db):
    wrong = ImapSettings(host="127.0.0.1", port=bounce_mailbox.port, login="demouser",
                         password="wrong", use_ssl=False)
    with pytest.raises(MailboxError, match=r"login as demouser at 127.0.0.1:\d+ refused"):
        process_mailbox(wrong, execution_db)
    nowhere = ImapSettings(host="127.0.0.1", port=1, login="x", use_ssl=False)
    with pytest.raises(MailboxError, match=r"cannot connect to 127\.0\.0\.1:1"):
        process_mailbox(nowhere, execution_db)
    folder = ImapSettings(host="127.0.0.1", port=bounce_mailbox.port, login="demouser",
                          password="demopass", use_ssl=False, folder="Nope")
    with pytest.raises(MailboxError, match="folder Nope refused"):
        process_mailbox(folder, execution_db)


@pytest.mark.fast
def test_settings_from_the_connection():
    settings = imap_settings_from_connection({
        "host": "imap.example.com", "login": "bounces", "password": "s3cret",
        "extra": {"folder": "Bounces", "delete_processed": "true"}})
    assert (settings.port, settings.use_ssl, settings.folder, settings.delete_processed) == (
        993, True, "Bounces", True)
    assert "s3cret" not in repr(settings)
    plain = imap_settings_from_connection({"host": "h", "login": "l",
                                           "extra": {"use_ssl": False, "starttls": True}})
    assert (plain.port, plain.starttls) == (143, True)
    with pytest.raises(ValueError, match="bounce mailbox: login is empty"):
        imap_settings_from_connection({"host": "h"})
