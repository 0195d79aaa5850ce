"""Email over SMTP: one reused connection per shard, multipart text + HTML, stable Message-ID.

A shard sends thousands of messages; opening a connection (and TLS, and AUTH) per
message would cost more than the messages themselves, so :class:`SmtpSession` keeps one
connection open and reconnects only after the server dropped it. It is a coroutine (the
sessions of a shard share one event loop, issue 24); :class:`SmtpSender` drives it for
callers without a loop (proofs, tests). The conversation is
driven command by command (MAIL, RCPT, DATA) rather than through ``sendmail`` so that
each refusal is classified by its own reply code: 4xx is retried later, 5xx fails.

The Message-ID is derived from the delivery-log id, so every attempt of one message
carries the same id (receivers can deduplicate, operators can grep the mail server log).

**Timeouts per phase** (RFC 5321 section 4.5.3.2): each command waits for its reply as
long as the RFC recommends (greeting, MAIL, RCPT 5 minutes; DATA initiation 2 minutes;
each data block 3 minutes; the reply to the final "." 10 minutes), each configurable
per connection. A slow reply holds the one session waiting for it, nothing else.

**The final "." is the point of no return.** A failure before it (connect, greeting,
MAIL, RCPT, DATA, the content) is a safe retry: the server discards an unfinished
transaction. A lost connection or a timeout *after* it is an unknown outcome: the server
may have queued the message before its reply got lost, so retrying could deliver it
twice. It fails with class ``unknown`` and is never retried automatically, unless the
connection says ``after_dot_timeout: retry`` (a duplicate preferred to a loss).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import json
import re
import secrets
import smtplib
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.header import Header
from email.headerregistry import Address
from email.utils import encode_rfc2231, format_datetime, formataddr, parseaddr
from functools import lru_cache
from typing import Any, TypeVar

from message_center.delivery.outcome import Outcome, smtp_reply_outcome
from message_center.ids import to_public

T = TypeVar("T")
DEFAULT_FROM = "Message Center <no-reply@message-center.local>"
#: The reply timeouts of RFC 5321 section 4.5.3.2 (seconds), by connection extra name.
PHASE_TIMEOUTS = {
    "greeting_timeout": 300.0,  # 220 greeting, EHLO, STARTTLS, AUTH (4.5.3.2.1)
    "mail_timeout": 300.0,  # MAIL FROM (4.5.3.2.2)
    "rcpt_timeout": 300.0,  # RCPT TO (4.5.3.2.3)
    "data_init_timeout": 120.0,  # DATA -> 354 (4.5.3.2.4)
    "data_block_timeout": 180.0,  # sending the content (4.5.3.2.5)
    "data_termination_timeout": 600.0,  # the final "." -> 250 (4.5.3.2.6)
}
AFTER_DOT_CHOICES = ("unknown", "retry")


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
    timeout: float = 30.0  # opening the TCP connection (and the TLS handshake)
    greeting_timeout: float = PHASE_TIMEOUTS["greeting_timeout"]  # the whole opening
    mail_timeout: float = PHASE_TIMEOUTS["mail_timeout"]
    rcpt_timeout: float = PHASE_TIMEOUTS["rcpt_timeout"]
    data_init_timeout: float = PHASE_TIMEOUTS["data_init_timeout"]
    data_block_timeout: float = PHASE_TIMEOUTS["data_block_timeout"]
    data_termination_timeout: float = PHASE_TIMEOUTS["data_termination_timeout"]
    #: A lost connection / timeout after the final ".": ``unknown`` (failed, never
    #: retried: no duplicate) or ``retry`` (sent again: a duplicate rather than a loss).
    after_dot_timeout: str = "unknown"
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
        for name in ("timeout", *PHASE_TIMEOUTS):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"SMTP settings: {name} {value!r} is not a positive number "
                                 "of seconds")
        if self.after_dot_timeout not in AFTER_DOT_CHOICES:
            raise ValueError(f"SMTP settings: after_dot_timeout {self.after_dot_timeout!r} "
                             f"is not one of {', '.join(AFTER_DOT_CHOICES)}")

    @property
    def transaction_seconds(self) -> float:
        """The longest one message can legitimately take once its session started it:
        opening a connection (connect, then greeting, EHLO, STARTTLS, AUTH within
        ``greeting_timeout``), MAIL, RCPT, DATA, the content and the wait for the final
        reply. The crash recovery must not call a message unknown before this (see
        ``docs/operations/relay-faults.md``)."""
        return (self.timeout + self.greeting_timeout + self.mail_timeout
                + self.rcpt_timeout + self.data_init_timeout + self.data_block_timeout
                + self.data_termination_timeout)


@lru_cache(maxsize=256)
def _domain(sender: str) -> str:
    return parseaddr(sender)[1].rpartition("@")[2] or "message-center.local"


def message_id(log_id: int, sender: str) -> str:
    """``<mc.<public delivery-log id>@<sender domain>>``: the same for every attempt."""
    return f"<mc.{to_public(log_id)}@{_domain(sender)}>"


CRLF = "\r\n"
#: The random half of every MIME boundary, drawn once per process: a boundary must not
#: be guessable from a template (or it could end a part early), and the log id makes it
#: unique per message; drawing 8 random bytes per message cost a getrandom() syscall each.
_BOUNDARY_SALT = secrets.token_hex(8)
_LEADING_DOT = re.compile(rb"(?m)^\.")  # SMTP dot-stuffing (RFC 5321 4.5.2)
_LINE_BREAKS = re.compile(r"[\r\n]+")
MAX_LINE = 998
#: Content up to this size goes out with its final "." in one write, after ``ready()``
#: (a loopback or LAN socket buffer takes it at once); bigger content is sent while
#: ``ready()`` waits for the mark's commit.
ONE_WRITE_BYTES = 64 * 1024


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
    if text.isascii() and max(map(len, text.split("\n"))) <= MAX_LINE:
        encoding, payload = "7bit", text
    else:
        encoding = "quoted-printable"
        payload = binascii.b2a_qp(text.encode("utf-8"), istext=True).decode("ascii")
    return (f'Content-Type: text/{subtype}; charset="utf-8"{CRLF}'
            f"Content-Transfer-Encoding: {encoding}{CRLF}{CRLF}"
            + payload.replace("\n", CRLF))


_date_cache: tuple[int, str] = (0, "")


def _date_now() -> str:
    """The Date header's value for now, in UTC (+0000; -0000 would mean "zone unknown"):
    formatted once per second, not per message (``format_datetime`` was ~2% of a
    delivering shard's CPU)."""
    global _date_cache
    second = int(time.time())
    if _date_cache[0] != second:
        _date_cache = (second, format_datetime(datetime.fromtimestamp(second, UTC)))
    return _date_cache[1]


def build_email(*, log_id: int, sender: str, recipient: str, subject: str | None,
                html: str | None, text: str | None,
                headers: dict[str, str] | None = None,
                message_id_override: str | None = None,
                attachments: Sequence[tuple[str, str, bytes, bool]] = ()
                ) -> tuple[str, bytes]:
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
        f"Date: {_date_now()}",
        f"Message-ID: {mid}",
        "MIME-Version: 1.0",
    ]
    lines += [f"{name}: {_header_value(value)}" for name, value in (headers or {}).items()]
    if attachments:  # (name, content type, bytes, also an alternative body part)
        return mid, _with_attachments(lines, log_id, html, text, attachments)
    if html is not None and text is not None:
        boundary = f"=_mc_{to_public(log_id)}_{_BOUNDARY_SALT}"
        lines.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
        body = CRLF.join(["", f"--{boundary}", _body_part(text, "plain"), f"--{boundary}",
                          _body_part(html, "html"), f"--{boundary}--", ""])
        message = CRLF.join(lines) + CRLF + body
    else:
        message = CRLF.join(lines) + CRLF + (
            _body_part(html, "html") if html is not None else _body_part(text or "", "plain"))
    return mid, message.encode("utf-8")


def _base64_part(headers: list[str], data: bytes) -> str:
    payload = base64.encodebytes(data).decode("ascii").replace("\n", CRLF)
    return CRLF.join([*headers, "Content-Transfer-Encoding: base64", "", payload.rstrip()])


def _file_param(name: str) -> str:
    """``filename="a.pdf"``, or RFC 2231 (``filename*=utf-8''...``) when not plain ASCII."""
    if name.isascii() and not set('"\\\r\n') & set(name):
        return f'filename="{name}"'
    return f"filename*={encode_rfc2231(name, 'utf-8')}"


def _with_attachments(lines: list[str], log_id: int, html: str | None, text: str | None,
                      attachments: Sequence[tuple[str, str, bytes, bool]]) -> bytes:
    """multipart/mixed: the bodies (multipart/alternative with text, html and the
    calendar invitations, so that mail clients offer "Add to calendar"), then each file
    in base64 (e-mail attachments, :mod:`message_center.channels.email_attachments`)."""
    outer = f"=_mc_{to_public(log_id)}_{_BOUNDARY_SALT}_m"
    inner = f"=_mc_{to_public(log_id)}_{_BOUNDARY_SALT}_a"
    bodies = [_body_part(text, "plain")] if text is not None else []
    if html is not None:
        bodies.append(_body_part(html, "html"))
    bodies += [_base64_part([f'Content-Type: {kind}; charset="utf-8"; method=REQUEST'], data)
               for _name, kind, data, alternative in attachments if alternative]
    parts = [f'Content-Type: multipart/alternative; boundary="{inner}"{CRLF}{CRLF}'
             + CRLF.join([*(f"--{inner}{CRLF}{body}" for body in bodies), f"--{inner}--", ""])]
    for name, kind, data, _alternative in attachments:
        param = _file_param(name)
        parts.append(_base64_part([f"Content-Type: {kind}; {param.replace('file', '', 1)}",
                                   f"Content-Disposition: attachment; {param}"], data))
    lines.append(f'Content-Type: multipart/mixed; boundary="{outer}"')
    body = CRLF.join(["", *(f"--{outer}{CRLF}{part}" for part in parts), f"--{outer}--", ""])
    return (CRLF.join(lines) + CRLF + body).encode("utf-8")


def smtp_settings_from_connection(conn: Mapping[str, Any]) -> SmtpSettings:
    """SMTP settings from an Airflow SMTP connection as a plain mapping (``host``,
    ``port``, ``login``, ``password``, ``extra`` as a dict or JSON text, or
    ``extra_dejson``), read the way Airflow's SMTP hook reads it: implicit TLS unless
    ``disable_ssl``, else STARTTLS unless ``disable_tls``; ``from_email``, ``timeout``
    (opening the connection); the reply timeouts of :data:`PHASE_TIMEOUTS` and
    ``after_dot_timeout`` (``unknown`` | ``retry``); the relay's limits
    ``max_sessions`` and ``max_messages_per_second``.

    The one parser: the DAG tasks (``mc_airflow.delivery``) and ``mc templates proof``
    both use it. A missing host is :class:`SmtpSettings`' default (127.0.0.1)."""
    extra = conn.get("extra") or conn.get("extra_dejson") or {}
    if isinstance(extra, str):
        extra = json.loads(extra) if extra.strip() else {}
    use_ssl = not _flag(extra.get("disable_ssl", False))
    starttls = not use_ssl and not _flag(extra.get("disable_tls", False))
    port = conn.get("port") or (465 if use_ssl else 587 if starttls else 25)
    host = {"host": conn["host"]} if conn.get("host") else {}
    phases = {name: relay_limit(extra, name, float) for name in PHASE_TIMEOUTS}
    after_dot = str(extra.get("after_dot_timeout") or "unknown").strip().lower()
    if after_dot not in AFTER_DOT_CHOICES:
        raise ValueError(f"SMTP connection extra after_dot_timeout: {after_dot!r} is not one "
                         f"of {', '.join(AFTER_DOT_CHOICES)}")
    return SmtpSettings(**host, port=int(port), login=conn.get("login") or None,
                        password=conn.get("password") or None, use_ssl=use_ssl,
                        starttls=starttls, from_email=str(extra.get("from_email") or DEFAULT_FROM),
                        timeout=relay_limit(extra, "timeout", float) or 30.0,
                        **{name: value for name, value in phases.items() if value is not None},
                        after_dot_timeout=after_dot,
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


_BARE_ADDRESS = re.compile(r"[^\s<>()\[\]\\,;:\"@]+@[^\s<>()\[\]\\,;:\"@]+")


@lru_cache(maxsize=1024)
def _quoted(address: str) -> str:
    """``<address>`` for an SMTP command: what ``smtplib.quoteaddr`` returns, without its
    header parser for the usual bare address (it cost more than the command)."""
    if _BARE_ADDRESS.fullmatch(address):
        return f"<{address}>"
    return smtplib.quoteaddr(address)


#: Longest reply line read (smtplib's ``_MAXLINE``): a longer one is a broken relay.
MAX_REPLY_LINE = 8192
#: While the content of a message is still in the socket's send buffer after
#: ``data_block_timeout`` would be noticed, the session checks it this often (only for a
#: content the kernel did not take in one write: a stalled or very slow relay).
FLUSH_POLL_SECONDS = 0.005


@lru_cache(maxsize=1)
def _local_hostname() -> str:
    """The name said in EHLO/HELO, as ``smtplib`` picks it: the host's FQDN, or its
    address literal when the FQDN has no dot (looked up once per process)."""
    fqdn = socket.getfqdn()
    if "." in fqdn:
        return fqdn
    address = "127.0.0.1"
    with contextlib.suppress(OSError):
        address = socket.gethostbyname(socket.gethostname())
    return f"[{address}]"


_FEATURE = re.compile(r"(?P<feature>[A-Za-z0-9][A-Za-z0-9\-]*) ?")


class _Unavailable(Exception):
    """The relay could not be reached or refused the session: nothing was sent."""


#: Called before the final "." (the point of no return); see :meth:`SmtpSession.send_bytes`.
ReadyAsync = Callable[[], Awaitable[None]]


class SmtpSession:
    """One SMTP connection driven as a coroutine, opened on first use and reused.

    **Our own client on asyncio streams, not ``aiosmtplib``** (issue 24): a shard runs its
    SMTP sessions as coroutines of one event loop (:mod:`message_center.delivery.pool`),
    and the relay-fault rules (issue 23) need two things ``aiosmtplib`` 5 does not give:
    MAIL, RCPT and DATA in one write when the relay offers PIPELINING (RFC 2920; it sends
    one command per round trip), and telling a connection lost *after* the final "." (an
    unknown outcome, never retried) from one lost while the content was still being
    written (a safe retry): its ``data()`` writes the content and the "." together and
    reports either as the same exception. The conversation here is the one ``smtplib``
    had (same replies read, same errors and texts: ``smtplib``'s exception classes are
    reused), so each refusal is still classified by its own reply code.

    Not shared by two coroutines at once: a shard's email sender lends each session a
    connection nobody else is using (:class:`~message_center.channels.email.EmailSender`).
    """

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._features: dict[str, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None  # the connection's

    # -- the wire ------------------------------------------------------------------------
    async def _send(self, data: bytes, timeout: float) -> None:
        """Write ``data``, waiting at most ``timeout`` for the socket to take it."""
        writer = self._writer
        if writer is None or writer.transport.is_closing():
            self._drop()
            raise smtplib.SMTPServerDisconnected("Server not connected")
        writer.write(data)
        if writer.transport.get_write_buffer_size():
            try:
                async with asyncio.timeout(timeout):
                    await writer.drain()
            except (OSError, TimeoutError):
                self._drop()
                raise smtplib.SMTPServerDisconnected("Server not connected") from None

    async def _flushed(self, keep: int, timeout: float) -> None:
        """Wait (at most ``timeout``) until no more than ``keep`` bytes written are still
        in the send buffer: what ``sendall`` returning meant with a blocking socket."""
        writer = self._writer
        if writer is None:
            raise smtplib.SMTPServerDisconnected("Server not connected")
        until = time.monotonic() + timeout
        while writer.transport.get_write_buffer_size() > keep:
            if writer.transport.is_closing() or time.monotonic() > until:
                self._drop()
                raise smtplib.SMTPServerDisconnected("Server not connected")
            await asyncio.sleep(FLUSH_POLL_SECONDS)

    async def _reply(self, timeout: float) -> tuple[int, bytes]:
        """The next (possibly multi-line) reply within ``timeout`` seconds, parsed as
        ``smtplib.SMTP.getreply`` does: (code, lines joined by LF; -1 if not numeric)."""
        reader = self._reader
        if reader is None:
            raise smtplib.SMTPServerDisconnected("please run connect() first")
        lines: list[bytes] = []
        code = -1
        try:
            async with asyncio.timeout(timeout):
                while True:
                    try:
                        line = await reader.readline()
                    except ValueError:  # longer than the stream's limit
                        self._drop()
                        raise smtplib.SMTPResponseException(500, "Line too long.") from None
                    if not line:
                        self._drop()
                        raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
                    lines.append(line[4:].strip(b" \t\r\n"))
                    try:
                        code = int(line[:3])
                    except ValueError:
                        code = -1
                        break
                    if line[3:4] != b"-":
                        break
        except TimeoutError:
            self._drop()
            raise smtplib.SMTPServerDisconnected(
                "Connection unexpectedly closed: timed out") from None
        except OSError as exc:
            self._drop()
            raise smtplib.SMTPServerDisconnected(
                f"Connection unexpectedly closed: {exc}") from exc
        return code, b"\n".join(lines)

    async def _command(self, line: str, timeout: float) -> tuple[int, bytes]:
        await self._send(f"{line}{CRLF}".encode("ascii"), timeout)
        return await self._reply(timeout)

    # -- opening -------------------------------------------------------------------------
    async def _connect(self) -> None:
        """Connect within ``timeout``, then greeting, EHLO, STARTTLS, AUTH within
        ``greeting_timeout`` altogether."""
        s = self.settings
        context = ssl.create_default_context() if s.use_ssl else None
        try:
            async with asyncio.timeout(s.timeout):
                self._reader, self._writer = await asyncio.open_connection(
                    s.host, s.port, ssl=context, server_hostname=s.host if context else None,
                    limit=MAX_REPLY_LINE + 2)
        except TimeoutError:
            raise TimeoutError("timed out") from None
        self._loop = asyncio.get_running_loop()
        opened_by = time.monotonic() + s.greeting_timeout

        def left() -> float:
            return max(opened_by - time.monotonic(), 0.001)

        try:
            code, reply = await self._reply(left())
            if code != 220:
                raise smtplib.SMTPConnectError(code, reply)
            await self._hello(left())
            if s.starttls:
                await self._starttls(left())
                await self._hello(left())
            if s.login:
                await self._login(s.login, s.password or "", left())
        except BaseException:
            self._drop()
            raise

    async def _hello(self, timeout: float) -> None:
        """EHLO (its extensions remembered), or HELO when EHLO is refused."""
        code, reply = await self._command(f"EHLO {_local_hostname()}", timeout)
        self._features = {}
        if 200 <= code < 300:
            for each in reply.decode("latin-1").split("\n")[1:]:
                if (found := _FEATURE.match(each)) is not None:
                    feature = found.group("feature").lower()
                    params = each[found.end("feature"):].strip()
                    if feature == "auth":
                        params = f"{self._features.get('auth', '')} {params}"
                    self._features[feature] = params
            return
        code, reply = await self._command(f"HELO {_local_hostname()}", timeout)
        if not 200 <= code < 300:
            raise smtplib.SMTPHeloError(code, reply)

    async def _starttls(self, timeout: float) -> None:
        if "starttls" not in self._features:
            raise smtplib.SMTPNotSupportedError("STARTTLS extension not supported by server.")
        code, reply = await self._command("STARTTLS", timeout)
        if code != 220:
            raise smtplib.SMTPResponseException(code, reply)
        assert self._writer is not None
        async with asyncio.timeout(timeout):
            await self._writer.start_tls(ssl.create_default_context(),
                                         server_hostname=self.settings.host)

    async def _login(self, user: str, password: str, timeout: float) -> None:
        """AUTH with the first of CRAM-MD5, PLAIN, LOGIN the relay offers (smtplib's
        order of preference)."""
        if "auth" not in self._features:
            raise smtplib.SMTPNotSupportedError("SMTP AUTH extension not supported by server.")
        offered = self._features["auth"].upper().split()
        mechanism = next((m for m in ("CRAM-MD5", "PLAIN", "LOGIN") if m in offered), None)
        if mechanism is None:
            raise smtplib.SMTPException("No suitable authentication method found.")

        def b64(value: bytes) -> str:
            return base64.b64encode(value).decode("ascii")

        if mechanism == "PLAIN":
            plain = b"\0" + user.encode() + b"\0" + password.encode()
            code, reply = await self._command(f"AUTH PLAIN {b64(plain)}", timeout)
        elif mechanism == "LOGIN":
            code, reply = await self._command(f"AUTH LOGIN {b64(user.encode())}", timeout)
            if code == 334:
                code, reply = await self._command(b64(password.encode()), timeout)
        else:
            code, reply = await self._command("AUTH CRAM-MD5", timeout)
            if code == 334:
                challenge = base64.b64decode(reply)
                digest = hmac.new(password.encode(), challenge, "md5").hexdigest()
                code, reply = await self._command(b64(f"{user} {digest}".encode()), timeout)
        if code not in (235, 503):
            raise smtplib.SMTPAuthenticationError(code, reply)

    async def _connection(self) -> None:
        """Open the connection if needed; raises :class:`_Unavailable`."""
        if self._writer is None:
            try:
                await self._connect()
            except (OSError, smtplib.SMTPException) as exc:
                raise _Unavailable(f"cannot connect to SMTP server {self.settings.host}:"
                                   f"{self.settings.port}: {type(exc).__name__}: "
                                   f"{exc}") from exc

    def _drop(self) -> None:
        """Close the connection at once (no QUIT): an unfinished transaction is
        discarded by the relay."""
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.transport.abort()

    # -- one message ---------------------------------------------------------------------
    async def send_bytes(self, data: bytes, message_id: str | None, envelope_from: str,
                         recipient: str, ready: ReadyAsync | None = None) -> Outcome:
        """Submit ready DATA bytes to ``recipient``; never raises for delivery problems.

        Before the final "." every failure is safe to retry: SMTP only takes
        responsibility for a message with its final 250 reply. A relay that cannot be
        reached (or refuses the session) is :meth:`Outcome.unavailable`: not a try. A
        lost connection or a timeout after the final "." is :meth:`Outcome.unknown`
        (or a retry with ``after_dot_timeout: retry``).

        ``ready`` is awaited before the final "." that commits the message at the server
        (the point of no return): after DATA was accepted, and before the content when
        it is small enough to go out with the "." in one write (``ONE_WRITE_BYTES``),
        after it otherwise. If it raises, the connection is dropped without the ".", so
        the server discards the message, and the exception propagates: nothing was sent.
        """
        s = self.settings
        if self._writer is not None and self._loop is not asyncio.get_running_loop():
            self._reader = self._writer = None  # opened in another (closed) loop: unusable
        # MAIL FROM, RCPT TO and DATA in one write when the relay offers PIPELINING
        # (RFC 2920): one round trip instead of three. Each reply is still read, in order,
        # within its own phase's timeout, and classified as its own phase's.
        envelope = (f"MAIL FROM:{_quoted(envelope_from)}{CRLF}"
                    f"RCPT TO:{_quoted(recipient)}{CRLF}").encode("ascii")
        try:
            reused = self._writer is not None
            await self._connection()
            try:
                pipelined = await self._open(envelope)
                code, reply = await self._reply(s.mail_timeout)
                if reused and code == 421:  # "closing": often an idle connection timed out
                    raise smtplib.SMTPServerDisconnected(reply.decode("utf-8", "replace"))
            except (OSError, smtplib.SMTPServerDisconnected):
                if not reused:
                    raise
                # The relay closed an idle connection (or went away): open a new one.
                self._drop()
                await self._connection()
                pipelined = await self._open(envelope)
                code, reply = await self._reply(s.mail_timeout)
        except _Unavailable as exc:
            return Outcome.unavailable(str(exc))
        except smtplib.SMTPResponseException as exc:
            self._drop()
            return smtp_reply_outcome("session", exc.smtp_code, exc.smtp_error)
        except (OSError, smtplib.SMTPException) as exc:
            self._drop()
            return Outcome.retry(f"SMTP connection lost at MAIL FROM: "
                                 f"{type(exc).__name__}: {exc}")
        phase = "MAIL FROM"
        dot_sent = [False]
        try:
            if code != 250:
                await self._reset(code, 2 if pipelined else 0)
                return smtp_reply_outcome("MAIL FROM", code, reply)
            phase = "RCPT TO"
            if not pipelined:
                await self._send(envelope.split(b"\r\n", 1)[1], s.rcpt_timeout)
            code, reply = await self._reply(s.rcpt_timeout)
            if code not in (250, 251):
                await self._reset(code, 1 if pipelined else 0)
                return smtp_reply_outcome("RCPT TO", code, reply)
            phase = "DATA"
            code, reply = await self._data(data, ready, dot_sent, pipelined)
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
            if dot_sent[0]:
                return self._after_dot(message_id, exc)
            return Outcome.retry(f"SMTP connection lost at {phase}: "
                                 f"{type(exc).__name__}: {exc}")
        except BaseException:  # ready() refused, or the session was cancelled
            self._drop()
            raise

    async def _open(self, envelope: bytes) -> bool:
        """Send MAIL FROM (and, pipelined, RCPT TO and DATA too); True when pipelined."""
        if "pipelining" in self._features:
            await self._send(envelope + b"DATA" + CRLF.encode(), self.settings.mail_timeout)
            return True
        await self._send(envelope.split(b"\r\n", 1)[0] + CRLF.encode(),
                         self.settings.mail_timeout)
        return False

    def _after_dot(self, message_id: str | None, exc: BaseException) -> Outcome:
        """No reply to the final ".": the relay may have queued the message."""
        s = self.settings
        what = (f"no reply from {s.host}:{s.port} after the final '.' of DATA "
                f"({type(exc).__name__}: {exc}; waited up to "
                f"{s.data_termination_timeout:g} s)")
        if s.after_dot_timeout == "retry":
            return Outcome.retry(f"{what}; sent again (after_dot_timeout: retry), with the "
                                 f"same Message-ID {message_id}")
        return Outcome.unknown(
            f"outcome unknown: {what}; the relay may have delivered it, so it is not sent "
            f"again (look for Message-ID {message_id} in the relay's log)")

    async def _data(self, data: bytes, ready: ReadyAsync | None, dot_sent: list[bool],
                    pipelined: bool = False) -> tuple[int, bytes]:
        """DATA (already sent when ``pipelined``), the content, ``ready()``, the final "."
        and its reply, each phase with its own timeout; ``dot_sent[0]`` turns true once the
        "." may have gone out."""
        s = self.settings
        if not pipelined:
            await self._send(b"DATA" + CRLF.encode(), s.data_init_timeout)
        code, reply = await self._reply(s.data_init_timeout)
        if code != 354:
            raise smtplib.SMTPDataError(code, reply)
        content = _LEADING_DOT.sub(b"..", data)
        if not content.endswith(b"\r\n"):
            content += b"\r\n"
        # A message that fits a socket buffer waits for ready() first and then goes out
        # with its final "." in one write (issue 24: one system call and one segment
        # less per message, and one wake-up less at the relay); a bigger one is sent
        # while ready() waits, as its transfer may take longer than the mark's commit.
        together = len(content) <= ONE_WRITE_BYTES
        if not together:
            await self._send(content, s.data_block_timeout)
            await self._flushed(0, s.data_block_timeout)
        if ready is not None:
            await ready()  # if it raises, send_bytes drops the connection: no "."
        if together:
            # The socket takes what it can at once and the transport keeps the rest: the
            # "." may have gone out only once at most its 3 bytes are left (a stall
            # while the content is still being written stays a safe retry).
            await self._send(content + b".\r\n", s.data_block_timeout)
            await self._flushed(3, s.data_block_timeout)
            dot_sent[0] = True
        else:
            dot_sent[0] = True
            await self._send(b".\r\n", s.data_block_timeout)
        return await self._reply(s.data_termination_timeout)

    async def _reset(self, code: int, pending: int = 0) -> None:
        """End a refused transaction with RSET; ``pending``: pipelined replies still to
        read first (RCPT / DATA after a refused MAIL: the relay refuses them too). A DATA
        that was accepted anyway gets no content and no "." - the connection is dropped,
        so the relay discards the transaction."""
        if code == 421:  # "closing transmission channel" (RFC 5321): reconnect next time
            self._drop()
            return
        try:
            timeouts = (self.settings.rcpt_timeout, self.settings.data_init_timeout)
            for timeout in timeouts[len(timeouts) - pending:]:
                late, _ = await self._reply(timeout)
                if late in (354, 421):
                    self._drop()
                    return
            await self._command("RSET", self.settings.mail_timeout)
        except (OSError, smtplib.SMTPException):
            self._drop()

    async def close(self) -> None:
        """End the session politely with QUIT (best effort)."""
        if self._writer is not None:
            try:
                await self._command("QUIT", min(self.settings.mail_timeout, 10.0))
            except (OSError, smtplib.SMTPException):
                pass
            finally:
                self._drop()


class SmtpSender:
    """One SMTP connection for callers without an event loop (proofs, tests): an
    :class:`SmtpSession` driven on a private event loop, so there is one SMTP client.

    Not thread-safe. ``close()`` (or the context manager) ends the session with QUIT.
    """

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings
        self._session = SmtpSession(settings)
        self._loop: asyncio.AbstractEventLoop | None = None

    def __enter__(self) -> SmtpSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _smtp(self) -> asyncio.StreamWriter | None:
        """The open connection (None when closed): the tests check it is reused."""
        return self._session._writer

    def _run(self, work: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        try:
            return self._loop.run_until_complete(work)
        finally:  # one more turn: a dropped connection's socket is closed now
            self._loop.run_until_complete(asyncio.sleep(0))

    def send_bytes(self, data: bytes, message_id: str | None, envelope_from: str,
                   recipient: str, ready: Callable[[], None] | None = None) -> Outcome:
        """:meth:`SmtpSession.send_bytes`, with a plain ``ready`` callable."""
        async def ready_async() -> None:
            assert ready is not None
            ready()

        return self._run(self._session.send_bytes(
            data, message_id, envelope_from, recipient,
            ready_async if ready is not None else None))

    def close(self) -> None:
        if self._loop is not None:
            try:
                self._run(self._session.close())
            finally:
                self._loop.close()
                self._loop = None
