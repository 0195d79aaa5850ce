"""Asynchronous bounces: delivery status notifications read from a bounce mailbox (IMAP).

A relay can accept a message (*Sent*) and bounce it later, as an RFC 3464 delivery status
notification or as one of the many non-standard bounce formats. This module

1. reads the unseen mails of the bounce mailbox over IMAP (:func:`process_mailbox`);
2. parses each one (:func:`parse_bounce`): the failed recipients come from
   ``flufl.bounce`` (GNU Mailman's maintained bounce detectors: RFC 3464 DSNs and
   about fifteen non-standard formats), the per-recipient ``Action`` / ``Status`` /
   ``Diagnostic-Code`` from the DSN's ``message/delivery-status`` part when there is one,
   and the delivery log from **our Message-ID** (``<mc.DELIVERY_LOG_ID@domain>``), quoted
   in the bounce (the returned message or its headers);
3. applies them (:func:`apply_bounces`, set-based): a permanent failure turns the *Sent*
   delivery log and event into *Delivery failed* with the bounce's reason, and every hard
   or soft bounce counts for the quarantine by the same rules as the delivery
   (:func:`~message_center.delivery.quarantine.record_bounces`); a *delayed* notification
   only counts as a soft bounce;
4. marks the mails ``\\Seen`` (and ``\\Deleted`` when asked) once the database committed,
   so a crash in between only re-reads mails whose effect is already there (idempotent:
   a bounce is counted once per delivery log).

A mail that cannot be used is reported with the reason (not a bounce, no Message Center
Message-ID, unknown delivery log, recipient mismatch, unreadable) and marked seen.
"""

from __future__ import annotations

import contextlib
import email
import imaplib
import logging
import re
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

from flufl.bounce import all_failures
from sqlalchemy import Connection, Engine, text

from message_center import state
from message_center.delivery.classification import Classification, classify_dsn
from message_center.delivery.quarantine import (
    DEFAULT_RULES,
    MAX_REASON_CHARS,
    Bounce,
    QuarantineRules,
    record_bounces,
)
from message_center.ids import to_stored

log = logging.getLogger(__name__)

#: Our Message-ID (``message_center.delivery.smtp.message_id``): the public log id.
OUR_MESSAGE_ID = re.compile(rb"<mc\.(\d{1,20})@[^>\s]{1,255}>", re.IGNORECASE)
MAX_MAIL_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True)
class RecipientFailure:
    """One failed (or delayed) recipient of a bounce."""

    address: str
    permanent: bool
    status: str | None = None
    diagnostic: str = ""
    original: str | None = None  # Original-Recipient, when the DSN gives one

    @property
    def classification(self) -> Classification:
        return classify_dsn(self.status, self.diagnostic,
                            "failed" if self.permanent else "delayed")


@dataclass(frozen=True)
class ParsedBounce:
    """What a bounce says: who failed, how, and which of our messages it is about."""

    failures: tuple[RecipientFailure, ...]
    log_ids: tuple[int, ...]
    problem: str | None = None  # why it cannot be used, when it cannot


@dataclass(frozen=True)
class BounceResult:
    """What one mail did: ``failed`` (Sent -> Delivery failed), ``delayed`` (soft bounce
    counted), ``already`` (seen before: nothing changed), ``unmatched`` (see reason)."""

    outcome: str
    reason: str
    log_id: int | None = None
    address: str | None = None
    failure_class: str | None = None
    uid: str | None = None


def _text(value: Any) -> str:
    return re.sub(r"\s+", " ", str(value or "")).strip()


def _address(value: Any) -> str:
    """``rfc822; Bob@Example.com`` -> ``bob@example.com``."""
    raw = _text(value)
    if ";" in raw:
        raw = raw.split(";", 1)[1]
    return raw.strip().strip("<>").strip().lower()


def _delivery_status(msg: Message) -> list[dict[str, str]]:
    """The per-recipient blocks of every ``message/delivery-status`` part."""
    blocks: list[dict[str, str]] = []
    for part in msg.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        payload = part.get_payload()
        if not isinstance(payload, list):
            continue
        for block in payload[1:] if len(payload) > 1 else payload:
            if not isinstance(block, Message):
                continue
            fields = {k.lower(): _text(v) for k, v in block.items()}
            if "final-recipient" in fields or "original-recipient" in fields:
                blocks.append(fields)
    return blocks


def _first_text(msg: Message, limit: int = 600) -> str:
    """The human part of the bounce (first text/plain), for non-DSN bounces."""
    for part in msg.walk():
        if part.get_content_type() == "text/plain" and not part.is_multipart():
            try:
                payload = part.get_payload(decode=True) or b""
                charset = part.get_content_charset() or "utf-8"
                body = payload.decode(charset, "replace")
            except (LookupError, ValueError):
                continue
            return _text(body)[:limit]
    return ""


def parse_bounce(raw: bytes) -> ParsedBounce:
    """Parse one bounce mail (pure: no database). ``problem`` says why it cannot be used."""
    if len(raw) > MAX_MAIL_BYTES:
        return ParsedBounce((), (), f"mail larger than {MAX_MAIL_BYTES} bytes")
    try:
        msg = email.message_from_bytes(raw)
        blocks = _delivery_status(msg)
        human = _first_text(msg)
    except Exception as exc:  # a malformed mail must not stop the mailbox
        return ParsedBounce((), (), f"unreadable mail: {type(exc).__name__}: {exc}")
    detector_error = ""
    try:
        temporary, permanent = all_failures(msg)
    except Exception as exc:  # flufl.bounce's heuristics can trip on odd mails
        temporary, permanent = frozenset(), frozenset()
        detector_error = f" (flufl.bounce: {type(exc).__name__}: {exc})"
    log_ids = []
    for match in OUR_MESSAGE_ID.finditer(raw):
        try:
            log_ids.append(to_stored(int(match.group(1))))
        except ValueError:
            continue
    log_ids = list(dict.fromkeys(log_ids))
    failures: dict[str, RecipientFailure] = {}
    for block in blocks:
        action = block.get("action", "failed").lower()
        if action not in ("failed", "delayed"):
            continue  # delivered, relayed, expanded: not a failure
        final = _address(block.get("final-recipient"))
        original = _address(block.get("original-recipient")) or None
        status = block.get("status")
        diagnostic = " ".join(x for x in (block.get("diagnostic-code", "").split(";", 1)[-1],
                                          status or "") if x).strip() or human
        failures[final or original or ""] = RecipientFailure(
            final or original or "", action == "failed", status, diagnostic[:MAX_REASON_CHARS],
            original)
    for addresses, is_permanent in ((permanent, True), (temporary, False)):
        for item in addresses:
            address = (item.decode("utf-8", "replace") if isinstance(item, bytes)
                       else str(item)).strip().lower()
            if address and address not in failures and not any(
                    f.original == address for f in failures.values()):
                failures[address] = RecipientFailure(address, is_permanent, None, human)
    failures.pop("", None)
    problem = None
    if not failures:
        problem = "not a bounce: no failed recipient found" + detector_error
    elif not log_ids:
        problem = ("no Message Center Message-ID (<mc.ID@domain>) in the bounce: it is not "
                   "about a message sent from here")
    return ParsedBounce(tuple(failures.values()), tuple(log_ids), problem)


def _match(parsed: ParsedBounce, logs: Mapping[int, Mapping[str, Any]]
           ) -> tuple[list[tuple[Mapping[str, Any], RecipientFailure]], str | None]:
    """Pair each referenced delivery log with the failure of its address."""
    if not logs:
        ids = ", ".join(str(i) for i in parsed.log_ids)
        return [], f"Message-ID refers to no delivery log here (stored id {ids})"
    pairs = []
    for row in logs.values():
        address = (row["address"] or "").lower()
        found = next((f for f in parsed.failures
                      if address in (f.address, f.original)), None)
        if found is None and len(parsed.failures) == 1 and len(logs) == 1:
            found = parsed.failures[0]  # forwarded or aliased: the DSN names the new address
        if found is not None:
            pairs.append((row, found))
    if not pairs:
        wanted = ", ".join(sorted((r["address"] or "?") for r in logs.values()))
        failed = ", ".join(sorted(f.address for f in parsed.failures))
        return [], f"failed recipient(s) {failed} are not the address of the message ({wanted})"
    return pairs, None


def apply_bounces(conn: Connection, parsed: Sequence[ParsedBounce],
                  rules: QuarantineRules = DEFAULT_RULES) -> list[BounceResult]:
    """Apply parsed bounces to the delivery logs, events and quarantine (one transaction,
    set-based). Returns one result per bounce, in order."""
    wanted = sorted({i for p in parsed if p.problem is None for i in p.log_ids})
    logs: dict[int, Mapping[str, Any]] = {}
    if wanted:
        logs = {int(r["id"]): r for r in conn.execute(text(
            "SELECT id, event_kind, event_id, channel, address, status FROM delivery_log "
            "WHERE id = ANY(:ids)"), {"ids": wanted}).mappings()}
    results: list[BounceResult] = []
    to_fail: dict[int, tuple[str, Classification]] = {}
    bounces: list[Bounce] = []
    for item in parsed:
        if item.problem is not None:
            results.append(BounceResult("unmatched", item.problem))
            continue
        pairs, problem = _match(item, {i: logs[i] for i in item.log_ids if i in logs})
        if problem is not None:
            results.append(BounceResult("unmatched", problem))
            continue
        mine: list[BounceResult] = []
        for row, failure in pairs:
            cls = failure.classification
            error = f"bounced after it was sent: {failure.diagnostic or cls.reason}"
            error = error[:MAX_REASON_CHARS]
            if cls.is_bounce:
                bounces.append(Bounce(row["channel"], row["address"], cls.klass.value,
                                      cls.reason, error, int(row["id"]),
                                      attempt=1 if failure.permanent else 0,
                                      source="bounce_mail"))
            if not failure.permanent or cls.verdict != "failed":
                mine.append(BounceResult("delayed", f"temporary: {error}", int(row["id"]),
                                         row["address"], cls.failure_class))
                continue
            if row["status"] == "sent":
                to_fail[int(row["id"])] = (error, cls)
            mine.append(BounceResult("failed" if row["status"] == "sent" else "already",
                                     error, int(row["id"]), row["address"],
                                     cls.failure_class))
        # one result per mail: the strongest effect (a bounce may list several messages)
        order = {"failed": 0, "already": 1, "delayed": 2}
        results.append(min(mine, key=lambda r: order[r.outcome]))
    if to_fail:
        ids = list(to_fail)
        done = state.fail_after_bounce(
            conn, log_ids=ids, errors=[to_fail[i][0] for i in ids],
            classes=[to_fail[i][1].klass.value for i in ids],
            reasons=[to_fail[i][1].reason for i in ids])
        results = [BounceResult("already", r.reason, r.log_id, r.address, r.failure_class)
                   if r.outcome == "failed" and r.log_id not in done else r for r in results]
    if bounces:
        record_bounces(conn, bounces, rules)
    return results


# --- the IMAP mailbox --------------------------------------------------------------------
@dataclass(frozen=True)
class ImapSettings:
    """Where the bounce mailbox is; built from the ``mc_bounce_mailbox`` connection."""

    host: str
    port: int = 993
    login: str = ""
    password: str = field(default="", repr=False)
    use_ssl: bool = True
    starttls: bool = False
    folder: str = "INBOX"
    delete_processed: bool = False
    timeout: float = 30.0

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("bounce mailbox: host is empty")
        if not 0 < self.port < 65536:
            raise ValueError(f"bounce mailbox: port {self.port} is not a TCP port")
        if self.use_ssl and self.starttls:
            raise ValueError("bounce mailbox: choose implicit TLS (ssl) or STARTTLS, not both")
        if not self.login:
            raise ValueError("bounce mailbox: login is empty")


def imap_settings_from_connection(conn: Mapping[str, Any]) -> ImapSettings:
    """From an Airflow ``imap`` connection as a plain mapping: host, port, login, password,
    extra ``use_ssl`` (default true: port 993), ``starttls``, ``folder`` (INBOX),
    ``delete_processed`` (false: processed mails are only marked seen), ``timeout``."""
    extra = conn.get("extra") or {}

    def flag(name: str, default: bool) -> bool:
        value = extra.get(name, default)
        if isinstance(value, str):
            return value.strip().lower() in ("1", "true", "yes", "on")
        return bool(value)

    use_ssl = flag("use_ssl", True)
    return ImapSettings(
        host=conn.get("host") or "", port=int(conn.get("port") or (993 if use_ssl else 143)),
        login=conn.get("login") or "", password=conn.get("password") or "",
        use_ssl=use_ssl, starttls=flag("starttls", False),
        folder=str(extra.get("folder") or "INBOX"),
        delete_processed=flag("delete_processed", False),
        timeout=float(extra.get("timeout") or 30))


@dataclass
class MailboxReport:
    read: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    unmatched: list[str] = field(default_factory=list)  # "uid N: reason"

    def as_dict(self) -> dict[str, Any]:
        return {"read": self.read, "outcomes": dict(self.outcomes),
                "unmatched": self.unmatched[:50]}


class MailboxError(RuntimeError):
    """The bounce mailbox cannot be read (connection, login, folder): the message says."""


def _check(answer: tuple[str, Any], what: str) -> Any:
    status, data = answer
    if status != "OK":
        detail = b" ".join(d for d in data if isinstance(d, bytes)).decode("utf-8", "replace")
        raise MailboxError(f"bounce mailbox: {what} refused: {detail or status}")
    return data


def _connect(settings: ImapSettings) -> imaplib.IMAP4:
    where = f"{settings.host}:{settings.port}"
    try:
        if settings.use_ssl:
            client: imaplib.IMAP4 = imaplib.IMAP4_SSL(
                settings.host, settings.port, ssl_context=ssl.create_default_context(),
                timeout=settings.timeout)
        else:
            client = imaplib.IMAP4(settings.host, settings.port, timeout=settings.timeout)
            if settings.starttls:
                client.starttls(ssl.create_default_context())
    except (OSError, imaplib.IMAP4.error) as exc:
        raise MailboxError(f"bounce mailbox: cannot connect to {where}: {exc}") from exc
    try:
        client.login(settings.login, settings.password)
    except imaplib.IMAP4.error as exc:
        client.shutdown()
        raise MailboxError(f"bounce mailbox: login as {settings.login} at {where} refused: "
                           f"{exc}") from exc
    return client


def process_mailbox(settings: ImapSettings, engine: Engine,
                    rules: QuarantineRules = DEFAULT_RULES, *, limit: int = 1000,
                    chunk: int = 100) -> MailboxReport:
    """Read up to ``limit`` unseen mails of the folder, apply them ``chunk`` by ``chunk``
    (one transaction each), then flag them (see the module doc)."""
    if limit < 1 or chunk < 1:
        raise ValueError("limit and chunk must be at least 1")
    report = MailboxReport()
    client = _connect(settings)
    try:
        _check(client.select(_quote(settings.folder)), f"folder {settings.folder}")
        data = _check(client.uid("SEARCH", None, "UNSEEN"), "search")
        uids = (data[0] or b"").split()[:limit]
        for start in range(0, len(uids), chunk):
            batch = uids[start:start + chunk]
            parsed: list[tuple[bytes, ParsedBounce]] = []
            for uid in batch:
                fetched = _check(client.uid("FETCH", uid, "(BODY.PEEK[])"), f"fetch {uid!r}")
                raw = next((part[1] for part in fetched if isinstance(part, tuple)), None)
                if raw is None:
                    parsed.append((uid, ParsedBounce((), (), "the server returned no body")))
                    continue
                parsed.append((uid, parse_bounce(raw)))
            with engine.begin() as conn:
                results = apply_bounces(conn, [p for _uid, p in parsed], rules)
            handled = []
            for (uid, _parsed), result in zip(parsed, results, strict=True):
                report.read += 1
                report.outcomes[result.outcome] = report.outcomes.get(result.outcome, 0) + 1
                name = uid.decode()
                if result.outcome == "unmatched":
                    report.unmatched.append(f"uid {name}: {result.reason}")
                    log.warning("bounce mailbox uid %s not used: %s", name, result.reason)
                else:
                    log.info("bounce mailbox uid %s: %s (log %s, %s)", name, result.outcome,
                             result.log_id, result.address)
                handled.append(uid)
            if handled:
                uid_set = b",".join(handled).decode()
                flags = r"(\Seen \Deleted)" if settings.delete_processed else r"(\Seen)"
                _check(client.uid("STORE", uid_set, "+FLAGS", flags), "flag processed mails")
                if settings.delete_processed:
                    _check(client.expunge(), "expunge")
        client.close()
    finally:
        with contextlib.suppress(OSError, imaplib.IMAP4.error):
            client.logout()
    return report


def _quote(folder: str) -> str:
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'
