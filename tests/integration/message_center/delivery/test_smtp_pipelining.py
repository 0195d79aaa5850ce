"""SMTP PIPELINING (RFC 2920) against a real SMTP server on loopback: MAIL FROM, RCPT TO
and DATA go out in one write when the relay offers it, each reply is still classified as
its own phase's, and after a refusal the connection stays in step for the next message.

The server is a small line-based SMTP server of the test's own (aiosmtpd, the project's
sink, does not offer PIPELINING): it can hold its replies until the whole envelope
arrived - a client that waits for each reply before the next command then times out - and
refuse MAIL or RCPT, or (misbehaving) accept DATA after a refused RCPT."""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from message_center.delivery.smtp import SmtpSender, SmtpSettings, build_email

SENDER = "Shop <shop@example.com>"


@dataclass
class Behaviour:
    pipelining: bool = True
    hold_until_data: bool = False  # answer MAIL/RCPT/DATA only once DATA arrived
    mail_reply: str = "250 OK"
    rcpt_reply: str = "250 OK"
    data_after_bad_rcpt: str = "554 5.5.1 no valid recipients"
    stall_rcpt: bool = False  # never answer RCPT (nor what follows)
    received: list[tuple[str, bytes]] = field(default_factory=list)
    connections: int = 0


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def _reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")
        self.wfile.flush()

    def handle(self) -> None:
        b = self.server.behaviour
        b.connections += 1
        self._reply("220 test relay")
        held: list[str] = []
        mail_ok = rcpt_ok = False
        recipient = ""
        while line := self.rfile.readline():
            command = line.decode().rstrip("\r\n")
            verb = command[:4].upper()
            if verb == "EHLO":
                self._reply("250-test relay")
                if b.pipelining:
                    self._reply("250-PIPELINING")
                self._reply("250 8BITMIME")
                continue
            if verb == "MAIL":
                mail_ok = b.mail_reply.startswith("2")
                reply = b.mail_reply
            elif verb == "RCPT":
                recipient = command.split(":", 1)[1].strip("<> ")
                rcpt_ok = mail_ok and b.rcpt_reply.startswith("2")
                reply = b.rcpt_reply if mail_ok else "503 5.5.1 MAIL first"
            elif verb == "DATA":
                if not mail_ok:
                    reply = "503 5.5.1 MAIL first"
                elif not rcpt_ok:
                    reply = b.data_after_bad_rcpt
                else:
                    reply = "354 go ahead"
            elif verb == "RSET":
                mail_ok = rcpt_ok = False
                self._reply("250 reset")
                continue
            elif verb == "QUIT":
                self._reply("221 bye")
                return
            else:
                self._reply("502 not implemented")
                continue
            if verb == "RCPT" and b.stall_rcpt:
                self.rfile.read()  # until the client gives up and closes
                return
            held.append(reply)
            if b.hold_until_data and verb != "DATA":
                continue
            for answer in held:
                self._reply(answer)
            held = []
            if reply.startswith("354"):
                content = b""
                while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                    content += chunk
                if chunk == b".\r\n":
                    b.received.append((recipient, content))
                    self._reply("250 queued")
                mail_ok = rcpt_ok = False


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, behaviour: Behaviour) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.behaviour = behaviour


@pytest.fixture
def relay() -> Iterator[tuple[Behaviour, SmtpSettings]]:
    behaviour = Behaviour()
    server = _Server(behaviour)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    settings = SmtpSettings(host="127.0.0.1", port=server.server_address[1],
                            from_email=SENDER, timeout=5, greeting_timeout=5,
                            mail_timeout=2, rcpt_timeout=2, data_init_timeout=2,
                            data_block_timeout=5, data_termination_timeout=5)
    try:
        yield behaviour, settings
    finally:
        server.shutdown()
        server.server_close()


def _send(sender: SmtpSender, log_id: int, to: str):
    message_id, data = build_email(log_id=log_id, sender=SENDER, recipient=to,
                                   subject="Hi", html=None, text="Hello")
    return sender.send_bytes(data, message_id, "shop@example.com", to)


def test_the_envelope_goes_out_in_one_write_when_the_relay_offers_pipelining(relay):
    behaviour, settings = relay
    behaviour.hold_until_data = True  # a one-command-at-a-time client would time out
    with SmtpSender(settings) as sender:
        outcomes = [_send(sender, i, f"c{i}@example.com") for i in range(1, 4)]
    assert [o.status for o in outcomes] == ["sent"] * 3
    assert [to for to, _ in behaviour.received] == [f"c{i}@example.com" for i in (1, 2, 3)]
    assert behaviour.connections == 1  # one connection kept for the three


def test_without_pipelining_one_command_at_a_time(relay):
    behaviour, settings = relay
    behaviour.pipelining = False
    with SmtpSender(settings) as sender:
        assert _send(sender, 1, "c1@example.com").status == "sent"
    behaviour.hold_until_data = True  # now only a pipelining client could get through
    with SmtpSender(settings) as sender:
        outcome = _send(sender, 2, "c2@example.com")
    assert outcome.status == "retry"
    assert "MAIL FROM" in (outcome.error or "")
    assert [to for to, _ in behaviour.received] == ["c1@example.com"]


def test_a_refused_recipient_is_classified_as_rcpt_and_the_next_message_goes_through(relay):
    behaviour, settings = relay
    with SmtpSender(settings) as sender:
        behaviour.rcpt_reply = "550 5.1.1 no such user"
        refused = _send(sender, 1, "gone@example.com")
        behaviour.rcpt_reply = "250 OK"
        accepted = _send(sender, 2, "here@example.com")
    assert refused.status == "failed"
    assert "RCPT TO refused: 550" in (refused.error or "")
    assert refused.failure_class == "hard"
    assert accepted.status == "sent"
    assert [to for to, _ in behaviour.received] == ["here@example.com"]
    assert behaviour.connections == 1  # the pipelined replies were read: still in step


def test_a_refused_sender_is_classified_as_mail_and_the_next_message_goes_through(relay):
    behaviour, settings = relay
    with SmtpSender(settings) as sender:
        behaviour.mail_reply = "451 4.3.0 try again later"
        refused = _send(sender, 1, "c1@example.com")
        behaviour.mail_reply = "250 OK"
        accepted = _send(sender, 2, "c2@example.com")
    assert refused.status == "retry"
    assert "MAIL FROM refused: 451" in (refused.error or "")
    assert accepted.status == "sent"
    assert [to for to, _ in behaviour.received] == ["c2@example.com"]
    assert behaviour.connections == 1


def test_data_accepted_after_a_refused_recipient_sends_nothing(relay):
    behaviour, settings = relay
    behaviour.rcpt_reply = "550 5.1.1 no such user"
    behaviour.data_after_bad_rcpt = "354 go ahead anyway"  # a misbehaving relay
    with SmtpSender(settings) as sender:
        refused = _send(sender, 1, "gone@example.com")
        behaviour.rcpt_reply = "250 OK"
        accepted = _send(sender, 2, "here@example.com")
    assert refused.status == "failed" and "RCPT TO refused: 550" in (refused.error or "")
    assert accepted.status == "sent"
    # The connection was dropped without content or final ".": nothing for gone@.
    assert [to for to, _ in behaviour.received] == ["here@example.com"]
    assert behaviour.connections == 2


def test_a_relay_that_stalls_at_rcpt_is_a_safe_retry_when_pipelined(relay):
    behaviour, settings = relay
    behaviour.stall_rcpt = True  # answers MAIL, then nothing (RCPT's own timeout: 2 s)
    with SmtpSender(settings) as sender:
        outcome = _send(sender, 1, "c1@example.com")
    assert outcome.status == "retry"
    assert "connection lost at RCPT TO" in (outcome.error or "")
    assert behaviour.received == []
