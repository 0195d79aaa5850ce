"""Email over SMTP: one reused connection per shard, multipart text + HTML, stable Message-ID.

A shard sends thousands of messages; opening a connection (and TLS, and AUTH) per
message would cost more than the messages themselves, so :class:`SmtpSender` keeps one
connection open and reconnects only after the server dropped it. The conversation is
driven command by command (MAIL, RCPT, DATA) rather than through ``sendmail`` so that
each refusal is classified by its own reply code: 4xx is retried later, 5xx fails.

The Message-ID is derived from the delivery-log id, so every attempt of one message
carries the same id (receivers can deduplicate, operators can grep the mail server log).
"""

from __future__ import annotations

import binascii
import json
import re
import secrets
import smtplib
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.header import Header
from email.headerregistry import Address
from email.utils import format_datetime, formataddr, parseaddr
from functools import lru_cache
from typing import Any

from message_center.delivery.outcome import Outcome, smtp_reply_outcome
from message_center.ids import to_public

DEFAULT_FROM = "Message Center <no-reply@message-center.local>"
# After a failed connection attempt, fail the next messages fast instead of waiting for a
# new connect timeout per message (they are retried later anyway).
RECONNECT_PAUSE_SECONDS = 5.0


@dataclass(frozen=True)
class SmtpSettings:
    """Where and how to submit email; built from the ``smtp_default`` connection."""

    host: str = "127.0.0.1"
    port: int = 25
    login: str | None = None
    password: str | None = field(default=None, repr=False)
    use_ssl: bool = False  # implicit TLS (SMTPS, usually port 465)
    starttls: bool = False  # upgrade a plain connection with STARTTLS (usually port 587)
    from_email: str = DEFAULT_FROM
    timeout: float = 30.0
    # The relay's limits for the whole DAG run (shared by its shard tasks), or None.
    max_sessions: int | None = None
    max_messages_per_second: float | None = None

    def __post_init__(self) -> None:
        if self.max_sessions is not None and (isinstance(self.max_sessions, bool) or
                                              not isinstance(self.max_sessions, int) or
                                              self.max_sessions < 1):
            raise ValueError(f"SMTP settings: max_sessions {self.max_sessions!r} is not a "
                             "whole number >= 1")
        if self.max_messages_per_second is not None and not self.max_messages_per_second > 0:
            raise ValueError(f"SMTP settings: max_messages_per_second "
                             f"{self.max_messages_per_second!r} is not a positive number")
        if not self.host:
            raise ValueError("SMTP settings: host is empty")
        if not 0 < self.port < 65536:
            raise ValueError(f"SMTP settings: port {self.port} is not a TCP port")
        if self.use_ssl and self.starttls:
            raise ValueError("SMTP settings: choose implicit TLS (ssl) or STARTTLS, not both")
        if self.timeout <= 0:
            raise ValueError("SMTP settings: timeout must be positive")


@lru_cache(maxsize=256)
def _domain(sender: str) -> str:
    return parseaddr(sender)[1].rpartition("@")[2] or "message-center.local"


def message_id(log_id: int, sender: str) -> str:
    """``<mc.<public delivery-log id>@<sender domain>>``: the same for every attempt."""
    return f"<mc.{to_public(log_id)}@{_domain(sender)}>"


CRLF = "\r\n"
_LEADING_DOT = re.compile(rb"(?m)^\.")  # SMTP dot-stuffing (RFC 5321 4.5.2)
_LINE_BREAKS = re.compile(r"[\r\n]+")
MAX_LINE = 998


def _header_value(value: str) -> str:
    """A header value on one logical line, RFC 2047-encoded when it is not plain ASCII.
    CR/LF are removed first: a template or an event must never inject a header."""
    value = _LINE_BREAKS.sub(" ", value)
    if value.isascii() and len(value) <= 900:
        return value
    return Header(value, "utf-8", maxlinelen=76).encode(linesep=CRLF)


_PLAIN_ADDRESS_SPECIALS = frozenset('<>()[]\\,;:"\r\n \t')


@lru_cache(maxsize=256)
def _formatted_address(value: str) -> str:
    name, address = parseaddr(value.replace("\r", " ").replace("\n", " "))
    return formataddr((name, address), charset="utf-8")


def _address_value(value: str) -> str:
    """A From/To header value; a bare ASCII address (the usual recipient) is used as is."""
    if value.isascii() and not _PLAIN_ADDRESS_SPECIALS.intersection(value):
        return value
    return _formatted_address(value)


def _body_part(content: str, subtype: str) -> str:
    """Headers and body of one text part: 7bit when plain ASCII with short lines, else
    quoted-printable (readable, and safe for any SMTP server); CRLF line ends."""
    text = content.replace("\r\n", "\n").replace("\r", "\n")
    if text.isascii() and all(len(line) <= MAX_LINE for line in text.split("\n")):
        encoding, payload = "7bit", text
    else:
        encoding = "quoted-printable"
        payload = binascii.b2a_qp(text.encode("utf-8"), istext=True).decode("ascii")
    return (f'Content-Type: text/{subtype}; charset="utf-8"{CRLF}'
            f"Content-Transfer-Encoding: {encoding}{CRLF}{CRLF}"
            + payload.replace("\n", CRLF))


def build_email(*, log_id: int, sender: str, recipient: str, subject: str | None,
                html: str | None, text: str | None,
                headers: dict[str, str] | None = None,
                message_id_override: str | None = None) -> tuple[str, bytes]:
    """The message as SMTP DATA bytes (CRLF), and its Message-ID (derived from the
    delivery-log id unless ``message_id_override`` is given: proofs have no log row).

    The one e-mail builder: deliveries, proofs and previews all use it, so a proof is
    built like the message recipients get.

    Written by hand rather than with :class:`email.message.EmailMessage`: the delivery
    builds one message per event, and the ``email`` package's header objects cost more
    than the SMTP exchange itself. The output is plain RFC 5322/2045 (checked against
    the ``email`` parser in the tests): multipart/alternative with the text part first.
    """
    if html is None and text is None:
        raise ValueError("the template has neither an HTML nor a text body")
    mid = message_id_override or message_id(log_id, sender)
    lines = [
        f"From: {_address_value(sender)}",
        f"To: {_address_value(recipient)}",
        f"Subject: {_header_value(subject or '')}",
        f"Date: {format_datetime(datetime.now(UTC))}",  # +0000: UTC (-0000 = zone unknown)
        f"Message-ID: {mid}",
        "MIME-Version: 1.0",
    ]
    lines += [f"{name}: {_header_value(value)}" for name, value in (headers or {}).items()]
    if html is not None and text is not None:
        boundary = f"=_mc_{to_public(log_id)}_{secrets.token_hex(8)}"
        lines.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
        body = CRLF.join(["", f"--{boundary}", _body_part(text, "plain"), f"--{boundary}",
                          _body_part(html, "html"), f"--{boundary}--", ""])
        message = CRLF.join(lines) + CRLF + body
    else:
        message = CRLF.join(lines) + CRLF + (
            _body_part(html, "html") if html is not None else _body_part(text or "", "plain"))
    return mid, message.encode("utf-8")


def smtp_settings_from_connection(conn: Mapping[str, Any]) -> SmtpSettings:
    """SMTP settings from an Airflow SMTP connection as a plain mapping (``host``,
    ``port``, ``login``, ``password``, ``extra`` as a dict or JSON text, or
    ``extra_dejson``), read the way Airflow's SMTP hook reads it: implicit TLS unless
    ``disable_ssl``, else STARTTLS unless ``disable_tls``; ``from_email``, ``timeout``;
    the relay's limits ``max_sessions`` and ``max_messages_per_second``.

    The one parser: the DAG tasks (``mc_airflow.delivery``) and ``mc templates proof``
    both use it. A missing host is :class:`SmtpSettings`' default (127.0.0.1)."""
    extra = conn.get("extra") or conn.get("extra_dejson") or {}
    if isinstance(extra, str):
        extra = json.loads(extra) if extra.strip() else {}
    use_ssl = not _flag(extra.get("disable_ssl", False))
    starttls = not use_ssl and not _flag(extra.get("disable_tls", False))
    port = conn.get("port") or (465 if use_ssl else 587 if starttls else 25)
    host = {"host": conn["host"]} if conn.get("host") else {}
    return SmtpSettings(**host, port=int(port), login=conn.get("login") or None,
                        password=conn.get("password") or None, use_ssl=use_ssl,
                        starttls=starttls, from_email=str(extra.get("from_email") or DEFAULT_FROM),
                        timeout=float(extra.get("timeout") or 30),
                        max_sessions=relay_limit(extra, "max_sessions", int),
                        max_messages_per_second=relay_limit(
                            extra, "max_messages_per_second", float))


def relay_limit(extra: Mapping[str, Any], name: str, kind: type[int] | type[float],
                connection: str = "SMTP connection") -> Any:
    """An optional positive limit from a connection's extras (missing or empty: none);
    a bad value raises naming the connection and the extra."""
    value = extra.get(name)
    if value is None or value == "":
        return None
    try:
        if isinstance(value, bool):
            raise ValueError
        number = kind(value)
        if kind is int and float(value) != number:
            raise ValueError
        if not number > 0:
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"{connection} extra {name}: {value!r} is not a positive "
                         f"{'whole number' if kind is int else 'number'}") from None
    return number


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


@lru_cache(maxsize=256)
def envelope_address(header_value: str) -> str:
    """The bare address of a ``Name <address>`` header value (the SMTP envelope wants it)."""
    address = parseaddr(header_value)[1]
    if "@" not in address:
        raise ValueError(f"not an email address: {header_value!r}")
    Address(addr_spec=address)  # raises on malformed addresses
    return address


class SmtpSender:
    """Sends messages over one SMTP connection, opened on first use and reused.

    Not thread-safe: a shard owns one sender. ``close()`` (or the context manager) ends
    the session politely with QUIT.
    """

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings
        self._smtp: smtplib.SMTP | None = None
        self._down_until = 0.0
        self._down_error = ""

    def __enter__(self) -> SmtpSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        smtp: smtplib.SMTP
        if s.use_ssl:
            smtp = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout,
                                    context=ssl.create_default_context())
        else:
            smtp = smtplib.SMTP(s.host, s.port, timeout=s.timeout)
        try:
            # The final "." goes out on its own after the content (see _data): without
            # NODELAY, Nagle + the server's delayed ACK would hold it ~40 ms each time.
            if smtp.sock is not None:
                smtp.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            smtp.ehlo_or_helo_if_needed()
            if s.starttls:
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if s.login:
                smtp.login(s.login, s.password or "")
        except BaseException:
            smtp.close()
            raise
        return smtp

    def _connection(self) -> smtplib.SMTP:
        if self._smtp is None:
            if time.monotonic() < self._down_until:
                raise ConnectionError(self._down_error)
            try:
                self._smtp = self._connect()
            except (OSError, smtplib.SMTPException) as exc:
                self._down_until = time.monotonic() + RECONNECT_PAUSE_SECONDS
                self._down_error = (f"cannot connect to SMTP server {self.settings.host}:"
                                    f"{self.settings.port}: {exc}")
                raise ConnectionError(self._down_error) from exc
        return self._smtp

    def _drop(self) -> None:
        if self._smtp is not None:
            try:
                self._smtp.close()
            finally:
                self._smtp = None

    def send_bytes(self, data: bytes, message_id: str | None, envelope_from: str,
                   recipient: str, ready: Callable[[], None] | None = None) -> Outcome:
        """Submit ready DATA bytes to ``recipient``; never raises for delivery problems.

        A connection lost before the server answered DATA counts as transient: SMTP
        only takes responsibility for a message with its final 250 reply.

        ``ready`` is called after the content went out and before the final "." that
        commits the message at the server (the point of no return). If it raises, the
        connection is dropped without the ".", so the server discards the message, and
        the exception propagates: nothing was sent.
        """
        try:
            smtp = self._connection()
        except ConnectionError as exc:
            return Outcome.retry(str(exc))
        try:
            code, reply = smtp.mail(envelope_from)
            if code != 250:
                self._reset(smtp, code)
                return smtp_reply_outcome("MAIL FROM", code, reply)
            code, reply = smtp.rcpt(recipient)
            if code not in (250, 251):
                self._reset(smtp, code)
                return smtp_reply_outcome("RCPT TO", code, reply)
            code, reply = smtp.data(data) if ready is None else self._data(smtp, data, ready)
            if code != 250:
                if code == 421:
                    self._drop()
                return smtp_reply_outcome("DATA", code, reply)
            return Outcome.sent(message_id)
        except smtplib.SMTPResponseException as exc:
            # Raised for 421 (server closing) and AUTH problems: the connection is gone.
            self._drop()
            return smtp_reply_outcome("session", exc.smtp_code, exc.smtp_error)
        except (OSError, smtplib.SMTPException) as exc:
            self._drop()
            return Outcome.retry(f"SMTP connection lost: {type(exc).__name__}: {exc}")

    def _data(self, smtp: smtplib.SMTP, data: bytes,
              ready: Callable[[], None]) -> tuple[int, bytes]:
        """``smtplib.SMTP.data`` with ``ready()`` between the content and the final "."."""
        smtp.putcmd("data")
        code, reply = smtp.getreply()
        if code != 354:
            raise smtplib.SMTPDataError(code, reply)
        content = _LEADING_DOT.sub(b"..", data)
        if not content.endswith(b"\r\n"):
            content += b"\r\n"
        smtp.send(content)
        try:
            ready()
        except BaseException:
            self._drop()  # no final ".": the server discards what it got
            raise
        smtp.send(b".\r\n")
        return smtp.getreply()

    def _reset(self, smtp: smtplib.SMTP, code: int) -> None:
        if code == 421:  # "closing transmission channel" (RFC 5321): reconnect next time
            self._drop()
            return
        try:
            smtp.rset()
        except (OSError, smtplib.SMTPException):
            self._drop()

    def close(self) -> None:
        if self._smtp is not None:
            try:
                self._smtp.quit()
            except (OSError, smtplib.SMTPException):
                pass
            finally:
                self._drop()
