"""Every class of channel answer (SMTP replies with RFC 3463 codes, DSN statuses, SMS
gateway answers) maps to the documented class, reason and verdict."""

from __future__ import annotations

import pytest

from message_center.delivery.classification import (
    AnswerClass,
    classify_dsn,
    classify_sms,
    classify_smtp,
    enhanced_code,
)
from message_center.delivery.outcome import Outcome, smtp_reply_outcome

pytestmark = pytest.mark.fast


@pytest.mark.parametrize(("code", "text", "stage", "klass", "reason", "verdict"), [
    # hard: the address
    (550, "5.1.1 <bob@example.test>: Recipient address rejected: User unknown", "RCPT TO",
     "hard", "user_unknown", "failed"),
    (550, "5.1.2 Host or domain name not found", "RCPT TO", "hard", "invalid_domain",
     "failed"),
    (553, "5.1.3 Bad recipient address syntax", "RCPT TO", "hard", "invalid_address",
     "failed"),
    (550, "5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
     "RCPT TO", "hard", "invalid_domain", "failed"),
    (550, "5.2.1 The email account that you tried to reach is disabled", "RCPT TO", "hard",
     "account_disabled", "failed"),
    (550, "No such user here", "RCPT TO", "hard", "user_unknown", "failed"),
    (551, "User not local", "RCPT TO", "hard", "user_unknown", "failed"),
    # soft: the mailbox, for now
    (452, "4.2.2 The email account that you tried to reach is over quota", "RCPT TO", "soft",
     "mailbox_full", "retry"),
    (552, "5.2.2 Mailbox full", "DATA", "soft", "mailbox_full", "failed"),
    (450, "4.4.1 No answer from host", "RCPT TO", "soft", "unreachable", "retry"),
    (450, "4.1.1 Recipient temporarily unknown", "RCPT TO", "soft", "user_unknown",
     "retry"),
    (550, "Requested action not taken", "RCPT TO", "soft", "undefined", "failed"),
    (452, "Insufficient system storage", "RCPT TO", "soft", "mailbox_full", "retry"),
    # policy: not the address's fault
    (554, "5.7.1 Message rejected as spam", "DATA", "policy", "refused", "failed"),
    (550, "5.7.26 Unauthenticated email is not accepted (DMARC policy)", "DATA", "policy",
     "refused", "failed"),
    (554, "Transaction failed", "DATA", "policy", "refused", "failed"),
    # throttle: slow down, retry
    (421, "4.7.0 Try again later, closing connection", "session", "throttle", "throttled",
     "retry"),
    (421, "Service not available", "RCPT TO", "throttle", "throttled", "retry"),
    (451, "4.7.1 Rate limit exceeded", "RCPT TO", "throttle", "throttled", "retry"),
    (450, "Too many messages, slow down", "RCPT TO", "throttle", "throttled", "retry"),
    # transient and error
    (451, "4.3.0 Local error in processing", "DATA", "transient", "server_error", "retry"),
    (451, "Requested action aborted", "RCPT TO", "transient", "server_error", "retry"),
    (554, "5.6.0 Message content rejected: malformed", "DATA", "error", "message_error",
     "failed"),
    (552, "5.3.4 Message size exceeds fixed limit", "DATA", "error", "message_error",
     "failed"),
    (500, "Syntax error, command unrecognized", "DATA", "error", "message_error", "failed"),
    # our sender, not the recipient
    (550, "5.1.8 Sender address rejected: Domain not found", "MAIL FROM", "error",
     "sender_refused", "failed"),
    (550, "5.1.1 user unknown", "MAIL FROM", "error", "sender_refused", "failed"),
    (452, "4.2.2 over quota", "MAIL FROM", "transient", "sender_refused", "retry"),
])
def test_smtp_replies(code, text, stage, klass, reason, verdict):
    result = classify_smtp(code, text, stage=stage)
    assert (result.klass.value, result.reason, result.verdict) == (klass, reason, verdict)
    assert result.is_throttle is (klass == "throttle")
    assert result.is_bounce is (klass in ("hard", "soft"))
    outcome = smtp_reply_outcome(stage, code, text.encode())
    assert outcome.status == verdict and outcome.failure_class == klass
    assert outcome.failure_reason == reason and outcome.error.startswith(f"SMTP {stage} refused")


def test_the_enhanced_code_must_agree_with_the_basic_code():
    # "5.1.1" in a 4xx reply does not make it permanent: the reply is retried, soft.
    result = classify_smtp(450, "5.1.1 mailbox busy, user unknown for now")
    assert (result.klass, result.verdict) == (AnswerClass.SOFT, "retry")
    assert classify_smtp(250, "2.0.0 OK").klass is AnswerClass.SENT


def test_enhanced_code_is_found_but_not_inside_versions_or_addresses():
    assert enhanced_code("550 5.1.1 <a@b>") == "5.1.1"
    assert enhanced_code("550 user unknown (v1.2.3.4)") is None
    assert enhanced_code("smtp; 552 5.2.2 quota") == "5.2.2"


def test_a_2xx_where_a_refusal_was_expected_still_fails():
    outcome = smtp_reply_outcome("MAIL FROM", 251, "odd")
    assert outcome.status == "failed" and outcome.failure_class == "error"


@pytest.mark.parametrize(("status", "diagnostic", "action", "klass", "reason", "verdict"), [
    ("5.1.1", "smtp; 550 5.1.1 <bob@example.test>: User unknown", "failed", "hard",
     "user_unknown", "failed"),
    ("5.0.0", "smtp; 550 no such user", "failed", "hard", "user_unknown", "failed"),
    ("5.2.2", "smtp; 552 5.2.2 Mailbox full", "failed", "soft", "mailbox_full", "failed"),
    ("4.4.7", "delivery time expired", "delayed", "soft", "unreachable", "retry"),
    ("5.4.7", "delivery time expired", "failed", "soft", "unreachable", "failed"),
    ("5.7.1", "smtp; 554 5.7.1 blocked", "failed", "policy", "refused", "failed"),
    (None, "user unknown", "failed", "hard", "user_unknown", "failed"),
    (None, "The recipient's mailbox is full", "failed", "soft", "mailbox_full", "failed"),
])
def test_dsn_statuses(status, diagnostic, action, klass, reason, verdict):
    result = classify_dsn(status, diagnostic, action)
    assert (result.klass.value, result.reason, result.verdict) == (klass, reason, verdict)


@pytest.mark.parametrize(("status", "body", "klass", "reason", "verdict"), [
    (201, {"id": "x"}, "sent", "", "sent"),
    (404, None, "hard", "user_unknown", "failed"),
    (410, {"error": "gone"}, "hard", "user_unknown", "failed"),
    (400, {"code": "invalid_number"}, "hard", "invalid_address", "failed"),
    (404, {"code": "UNKNOWN_SUBSCRIBER"}, "hard", "user_unknown", "failed"),
    (400, {"code": "absent_subscriber"}, "soft", "unreachable", "retry"),
    (400, {"error_code": "handset_full"}, "soft", "mailbox_full", "retry"),
    (403, None, "policy", "refused", "failed"),
    (400, {"code": "opted_out"}, "policy", "refused", "failed"),
    (429, None, "throttle", "throttled", "retry"),
    (503, None, "transient", "server_error", "retry"),
    (408, None, "transient", "server_error", "retry"),
    (422, {"error": "missing to"}, "error", "message_error", "failed"),
])
def test_sms_gateway_answers(status, body, klass, reason, verdict):
    result = classify_sms(status, body)
    assert (result.klass.value, result.reason, result.verdict) == (klass, reason, verdict)


def test_outcomes_without_an_answer_are_classified_as_their_kind():
    assert Outcome.retry("connection refused").failure_class == "transient"
    assert Outcome.retry("connection refused").failure_reason == "not_connected"
    assert Outcome.failed("template broken").failure_class == "error"
    assert Outcome.sent("<id>").failure_class is None
    assert Outcome.sent("<id>").failure_reason is None
