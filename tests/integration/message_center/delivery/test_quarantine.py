"""Quarantine decisions on real PostgreSQL: the rules (hard at once, soft N within D days,
automatic release after R days), manual add/release, idempotency, clear errors."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from message_center.delivery import quarantine as q
from message_center.delivery.quarantine import Bounce, ChannelRules, QuarantineRules

RULES = QuarantineRules(email=ChannelRules(soft_threshold=3, soft_window_days=7,
                                           release_after_days=30),
                        sms=ChannelRules(soft_threshold=2, soft_window_days=1,
                                         release_after_days=0))


def bounce(address, klass="soft", log_id=1, attempt=1, channel="email", source="delivery",
           reason=None):
    return Bounce(channel, address, klass, reason or ("user_unknown" if klass == "hard"
                                                      else "mailbox_full"),
                  f"SMTP RCPT TO refused: {klass}", log_id, attempt, source)


def record(engine, *bounces, rules=RULES):
    with engine.begin() as conn:
        return q.record_bounces(conn, list(bounces), rules)


def state(engine, address, channel="email"):
    with engine.connect() as conn:
        return q.get(conn, channel, address)


def test_a_hard_bounce_quarantines_at_once(execution_db):
    assert record(execution_db, bounce("Bob@Example.test", "hard")) == [
        ("email", "bob@example.test")]
    row = state(execution_db, "bob@example.test")
    assert row["active"] and row["failure_class"] == "hard"
    assert row["failure_reason"] == "user_unknown" and row["bounce_count"] == 1
    assert row["reason"].startswith("hard bounce (user_unknown): SMTP RCPT TO refused")
    assert row["source"] == "delivery" and row["origin_cell"] == 0
    with execution_db.connect() as conn:
        days = conn.execute(text("SELECT extract(epoch FROM release_at - now()) / 86400 "
                                 "FROM quarantine")).scalar_one()
    assert 29.9 < days <= 30


def test_soft_bounces_count_up_to_the_threshold(execution_db):
    assert record(execution_db, bounce("s@example.test", log_id=1)) == []
    assert record(execution_db, bounce("s@example.test", log_id=2)) == []
    assert state(execution_db, "s@example.test") is None
    assert record(execution_db, bounce("s@example.test", log_id=3)) == [
        ("email", "s@example.test")]
    row = state(execution_db, "s@example.test")
    assert row["failure_class"] == "soft" and row["bounce_count"] == 3
    assert row["reason"].startswith("3 soft bounces in 7 days (last: mailbox_full)")


def test_a_repeated_bounce_counts_once(execution_db):
    for _ in range(3):  # the same attempt recorded three times (a retried finalize)
        assert record(execution_db, bounce("s@example.test", log_id=7, attempt=1)) == []
    with execution_db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM bounce")).scalar_one() == 1


def test_old_soft_bounces_leave_the_window(execution_db):
    record(execution_db, bounce("s@example.test", log_id=1), bounce("s@example.test", log_id=2))
    with execution_db.begin() as conn:
        conn.execute(text("UPDATE bounce SET at = now() - interval '8 days'"))
    assert record(execution_db, bounce("s@example.test", log_id=3)) == []
    # per channel: SMS needs 2 within 1 day
    assert record(execution_db, bounce("+33600000001", log_id=4, channel="sms"),
                  bounce("+33600000001", log_id=5, channel="sms")) == [("sms", "+33600000001")]
    assert state(execution_db, "+33600000001", "sms")["release_at"] is None  # R = 0: never


def test_release_is_kept_and_bounces_before_it_do_not_count_again(execution_db):
    record(execution_db, bounce("h@example.test", "hard"))
    with execution_db.begin() as conn:
        released = q.release(conn, "email", "H@example.test", decided_by="ops")
        again = q.release(conn, "email", "h@example.test", decided_by="someone else")
    assert released["status"] == "released" and not released["active"]
    assert released["decided_by"] == "ops" and again["decided_by"] == "ops"  # idempotent
    # a soft bounce after the release does not bring back the hard one before it
    assert record(execution_db, bounce("h@example.test", log_id=2)) == []
    assert not state(execution_db, "h@example.test")["active"]
    assert record(execution_db, bounce("h@example.test", "hard", log_id=3)) == [
        ("email", "h@example.test")]


def test_automatic_release_after_r_days(execution_db):
    record(execution_db, bounce("h@example.test", "hard"))
    with execution_db.begin() as conn:
        conn.execute(text("UPDATE quarantine SET release_at = now() - interval '1 second'"))
        rows, total = q.list_quarantine(conn, status="released")
    assert total == 1 and rows[0]["address"] == "h@example.test" and not rows[0]["active"]
    with execution_db.connect() as conn:
        assert q.list_quarantine(conn)[1] == 0


def test_manual_add_list_and_filters(execution_db):
    with execution_db.begin() as conn:
        row = q.add(conn, "email", " Eve@Example.test ", "asked by the customer",
                    decided_by="admin", source="api")
        q.add(conn, "sms", "+33 6 00 00 00 02", "", release_after_days=1)
        again = q.add(conn, "email", "eve@example.test", "second reason")
    assert row["address"] == "eve@example.test" and row["failure_class"] == "manual"
    assert row["release_at"] is None and row["active"]
    assert again["reason"] == "second reason" and again["created"] == row["created"]
    with execution_db.connect() as conn:
        assert q.list_quarantine(conn)[1] == 2
        rows, total = q.list_quarantine(conn, channel="sms")
        assert total == 1 and rows[0]["reason"] == "quarantined by hand"
        assert q.list_quarantine(conn, address="EVE")[1] == 1
        assert q.list_quarantine(conn, address="%")[1] == 0  # a literal, not a wildcard
        assert q.list_quarantine(conn, failure_class="hard")[1] == 0
        assert q.get(conn, "email", "nobody@example.test") is None


@pytest.mark.fast
@pytest.mark.parametrize(("channel", "address", "message"), [
    ("fax", "x", "channel 'fax': expected one of email, sms"),
    ("email", "  ", "address is empty"),
    ("email", "no-at-sign", "'no-at-sign' is not an email address"),
    ("email", "a b@c", "is not an email address"),
    ("sms", "call me", "'call me' is not a phone number"),
])
def test_bad_addresses_are_refused_clearly(channel, address, message):
    with pytest.raises(ValueError, match=message):
        q.normalize_address(channel, address)


@pytest.mark.fast
@pytest.mark.parametrize(("values", "message"), [
    ('{"email": {"soft_threshold": 0}}', "email: quarantine rule soft_threshold: 0 is outside"),
    ('{"email": {"soft_treshold": 3}}', r"email: unknown key\(s\) \['soft_treshold'\]"),
    ('{"fax": {}}', r"unknown channel\(s\) \['fax'\]"),
    ('{"sms": {"release_after_days": "soon"}}', "'soon' is not a number"),
    ('{"sms": {"soft_threshold": 2.5}}', "2.5 is not a whole number"),
    ("{email", "not JSON"),
    ("[1]", "expected an object"),
])
def test_bad_rules_are_refused_naming_the_key(values, message):
    with pytest.raises(ValueError, match=message):
        QuarantineRules.from_mapping(values, where="Variable mc_quarantine_rules")


@pytest.mark.fast
def test_rules_defaults_and_partial_settings():
    assert QuarantineRules.from_mapping(None) == QuarantineRules()
    rules = QuarantineRules.from_mapping({"sms": {"soft_threshold": 5}})
    assert rules.sms == ChannelRules(soft_threshold=5) and rules.email == ChannelRules()
