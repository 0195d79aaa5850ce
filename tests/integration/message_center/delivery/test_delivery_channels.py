"""The SMTP sender and the SMS gateway client against real servers on loopback."""

from __future__ import annotations

import json

import pytest
from conftest import free_port

from message_center.delivery.sms import SmsSender, SmsSettings
from message_center.delivery.smtp import (
    SmtpSender,
    SmtpSettings,
    build_email,
    envelope_address,
    message_id,
)


@pytest.fixture
def smtp(test_deployment):
    with SmtpSender(SmtpSettings(port=test_deployment.smtp_port)) as sender:
        yield sender


def email(log_id: int, to: str, html: str | None = "<p>Hi</p>", text: str | None = "Hi"):
    """(Message-ID, SMTP bytes) of a message built like every delivery builds it."""
    return build_email(log_id=log_id, sender="Shop <shop@example.test>", recipient=to,
                       subject="Hello", html=html, text=text)


def send(sender, message, envelope_from, recipient):
    mid, data = message
    return sender.send_bytes(data, mid, envelope_from, recipient)


def parsed(message):
    from email import message_from_bytes, policy

    return message_from_bytes(message[1], policy=policy.default)


def test_multipart_message_with_a_stable_message_id(smtp, smtp_sink):
    outcome = send(smtp, email(42, "a@example.test"), "shop@example.test", "a@example.test")
    assert outcome.status == "sent"
    assert outcome.provider_id == "<mc.42@example.test>" == message_id(42, "x@example.test")
    (message,) = smtp_sink.messages()
    assert message["Message-ID"] == "<mc.42@example.test>"
    assert message.get_content_type() == "multipart/alternative"
    parts = {part.get_content_type(): part.get_content() for part in message.iter_parts()}
    assert parts["text/plain"].strip() == "Hi" and parts["text/html"].strip() == "<p>Hi</p>"


@pytest.mark.fast
def test_single_part_messages():
    assert parsed(email(1, "a@x.test", text=None)).get_content_type() == "text/html"
    assert parsed(email(1, "a@x.test", html=None)).get_content_type() == "text/plain"
    with pytest.raises(ValueError, match="neither an HTML nor a text body"):
        email(1, "a@x.test", html=None, text=None)


def test_one_connection_is_reused(smtp, smtp_sink):
    for n in range(3):
        assert send(smtp, email(n + 1, f"u{n}@example.test"), "shop@example.test",
                    f"u{n}@example.test").status == "sent"
        if n == 0:
            connection = smtp._smtp
    assert smtp._smtp is connection
    assert len(smtp_sink.messages()) == 3


def test_4xx_is_transient_5xx_is_permanent_and_the_connection_survives(smtp, smtp_sink):
    smtp_sink.script("busy@example.test", "451 4.3.0 try later")
    smtp_sink.script("gone@example.test", "550 5.1.1 no such user")
    busy = send(smtp, email(1, "busy@example.test"), "shop@example.test", "busy@example.test")
    gone = send(smtp, email(2, "gone@example.test"), "shop@example.test", "gone@example.test")
    fine = send(smtp, email(3, "ok@example.test"), "shop@example.test", "ok@example.test")
    assert (busy.status, gone.status, fine.status) == ("retry", "failed", "sent")
    assert "451" in busy.error and "550 5.1.1 no such user" in gone.error
    assert [str(m["To"]) for m in smtp_sink.messages()] == ["ok@example.test"]


def test_connection_refused_is_transient():
    with SmtpSender(SmtpSettings(port=free_port(), timeout=2)) as sender:
        outcome = send(sender, email(1, "a@example.test"), "shop@example.test",
                       "a@example.test")
        again = send(sender, email(2, "b@example.test"), "shop@example.test",
                     "b@example.test")
    assert outcome.status == again.status == "retry"
    assert "cannot connect to SMTP server" in outcome.error


@pytest.mark.fast
def test_bad_settings_and_addresses_are_refused():
    with pytest.raises(ValueError, match="port 0"):
        SmtpSettings(port=0)
    with pytest.raises(ValueError, match="not both"):
        SmtpSettings(use_ssl=True, starttls=True)
    assert "secret" not in repr(SmtpSettings(password="secret"))
    assert envelope_address("Shop <shop@example.test>") == "shop@example.test"
    with pytest.raises(ValueError, match="not an email address"):
        envelope_address("Shop")


@pytest.fixture
def sms(sms_sink):
    with SmsSender(SmsSettings(base_url=sms_sink.url, sender="MsgCenter")) as sender:
        yield sender


def test_sms_is_posted_as_json(sms, sms_sink):
    outcome = sms.send(log_id=9, to="+33600000001", text="Your code is 1234")
    assert outcome.status == "sent" and outcome.provider_id.startswith("sms-")
    (message,) = sms_sink.messages()
    assert message["to"] == "+33600000001" and message["text"] == "Your code is 1234"
    assert message["from"] == "MsgCenter" and message["reference"] == "mc-9"
    assert message["idempotency_key"] == "mc-9" and message["id"] == outcome.provider_id


def test_sms_gateway_errors_are_classified(sms, sms_sink):
    sms_sink.script("+1", "503")
    sms_sink.script("+2", "429")
    sms_sink.script("+3", "400")
    results = [sms.send(log_id=n, to=f"+{n}", text="x").status for n in (1, 2, 3)]
    assert results == ["retry", "retry", "failed"]
    assert sms.send(log_id=1, to="+1", text="x").status == "sent"  # 503 was once


def test_sms_gateway_down_is_transient():
    with SmsSender(SmsSettings(base_url=f"http://127.0.0.1:{free_port()}",
                               timeout=2)) as sender:
        outcome = sender.send(log_id=1, to="+1", text="x")
    assert outcome.status == "retry" and "unreachable" in outcome.error


def test_sms_sink_refuses_bad_requests(sms_sink):
    import httpx

    response = httpx.post(f"{sms_sink.url}/messages", content=json.dumps({"to": "+1"}),
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and "text" in response.json()["error"]
    assert sms_sink.messages() == []


@pytest.mark.fast
def test_built_messages_are_standard_mime_with_crlf():
    from email import message_from_bytes, policy

    mid, data = build_email(
        log_id=7, sender="Boutique Été <shop@example.test>", recipient="a@example.test",
        subject="Commande n°1 confirmée\r\nBcc: evil@example.test",
        html="<p>Très bien</p>\n" + "x" * 1200, text="Merci ✓\nLigne 2",
        headers={"X-Message-Center-Event": "rt:7"})
    assert b"\r\n" in data and b"\n" not in data.replace(b"\r\n", b"")  # CRLF only
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))
    message = message_from_bytes(data, policy=policy.default)
    assert message["Message-ID"] == mid == "<mc.7@example.test>"
    assert message["Subject"] == "Commande n°1 confirmée Bcc: evil@example.test"
    assert "Bcc" not in message  # no header injection from a rendered subject
    assert str(message["From"]) == "Boutique Été <shop@example.test>"
    assert message.get_body(("plain",)).get_content().replace("\r\n", "\n") == \
        "Merci ✓\nLigne 2"
    assert message.get_body(("html",)).get_content().startswith("<p>Très bien</p>")
    assert message["X-Message-Center-Event"] == "rt:7"
    assert message["Date"].endswith(" +0000")  # UTC; -0000 would say "zone unknown"
    assert message["Date"].datetime.utcoffset() is not None


@pytest.mark.fast
def test_built_single_part_messages():
    from email import message_from_bytes, policy

    _, html_only = build_email(log_id=1, sender="s@x.test", recipient="a@x.test",
                               subject="s", html="<p>h</p>", text=None)
    assert message_from_bytes(html_only, policy=policy.default).get_content_type() == \
        "text/html"
    with pytest.raises(ValueError, match="neither"):
        build_email(log_id=1, sender="s@x.test", recipient="a@x.test", subject="s",
                    html=None, text=None)
