"""What a channel's answer means for the address: the one classification of every answer.

Every answer of a channel - an SMTP reply (with its RFC 3463 enhanced status code when
the server gives one), an SMS gateway's HTTP answer, the status of a delivery status
notification (RFC 3464) that arrives later, a connection problem - becomes a
:class:`Classification`: a **class** (what to do about the address) and a **reason**
(why, in a short fixed vocabulary close to Adobe Campaign's failure reasons).

* ``hard`` - the address does not exist or cannot exist: the message fails, the
  address is quarantined at once.
* ``soft`` - the mailbox cannot take it now (full, absent, unreachable): retried when the
  answer was temporary (4xx), else failed; counts towards quarantine (N within D days).
* ``policy`` - refused for policy, spam, reputation or content: fails; the address is
  not to blame and is left alone.
* ``throttle`` - slow down (``421``, ``4.7.x``, HTTP 429): retried; address untouched.
* ``transient`` - other temporary trouble (no connection, ``451``, a gateway's 5xx):
  retried; address untouched.
* ``error`` - permanent but not about the address (our sender refused, a syntax or
  content error, a template error): fails; address untouched.
* ``unknown`` - nobody can tell whether the message went out: the connection was lost
  or timed out after the final "." of SMTP DATA, or the worker died at that point. The
  relay may have delivered it: fails (never retried automatically, so the recipient
  never gets it twice); address untouched.

The verdict (``sent`` / ``failed`` / ``retry``) is the one the delivery always used:
SMTP 4xx is retried and 5xx fails; an HTTP gateway's 408/425/429/5xx is retried and
other 4xx fail. The class adds *why*, so the ledger can quarantine (hard, soft) and a
session pool can back off (throttle) instead of failing.

Only the recipient's answers count against the recipient: a refusal of ``MAIL FROM``
(our sender) or of the session is never ``hard`` or ``soft``.

The module is pure (no I/O, no database): callers pass the code and the text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from message_center.statuses import AnswerClass

Verdict = Literal["sent", "failed", "retry"]

#: The classes that say something about the address (they feed the quarantine).
BOUNCE_CLASSES = frozenset({AnswerClass.HARD, AnswerClass.SOFT})

#: The reason vocabulary (stored in ``delivery_log.failure_reason``).
REASONS = {
    "user_unknown": "the mailbox / number does not exist",
    "invalid_domain": "the domain does not exist or takes no mail",
    "invalid_address": "the address is malformed",
    "account_disabled": "the mailbox exists but is disabled",
    "mailbox_full": "the mailbox is full",
    "unreachable": "the recipient's system could not be reached in time",
    "refused": "refused for policy, spam or reputation",
    "throttled": "the server asks us to slow down",
    "not_connected": "no connection to the provider",
    "server_error": "temporary problem at the provider",
    "message_error": "the message itself was refused or could not be built",
    "sender_refused": "our sender address or session was refused",
    "outcome_unknown": "no answer after the message was handed over: it may have been "
                       "delivered",
    "undefined": "the answer does not say",
    "attachment_unavailable": "a file of the event could not be fetched from its URL (for now)",
}

_ENHANCED = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")

# Text hints, for replies without an enhanced code (or with x.0.0). Order matters.
_TEXT_HINTS: tuple[tuple[re.Pattern[str], AnswerClass, str], ...] = (
    (re.compile(r"rate.?limit|too many (messages|connections|recipients)|slow down|"
                r"try again later|throttl", re.I), AnswerClass.THROTTLE, "throttled"),
    (re.compile(r"quota|mailbox (is )?full|over ?quota|storage|insufficient space", re.I),
     AnswerClass.SOFT, "mailbox_full"),
    (re.compile(r"spam|blocked|block ?list|black ?list|reputation|policy|denied|"
                r"not allowed|rejected for", re.I), AnswerClass.POLICY, "refused"),
    (re.compile(r"user unknown|unknown user|no such (user|mailbox|recipient)|"
                r"does not exist|doesn't exist|invalid (recipient|mailbox)|"
                r"recipient (address )?rejected|mailbox (not found|unavailable)|"
                r"unknown (recipient|mailbox)|address rejected", re.I),
     AnswerClass.HARD, "user_unknown"),
    (re.compile(r"(host|domain) (not found|unknown)|no mx|null mx|unrouteable", re.I),
     AnswerClass.HARD, "invalid_domain"),
    (re.compile(r"disabled|inactive|deactivated|suspended", re.I),
     AnswerClass.HARD, "account_disabled"),
)


@dataclass(frozen=True)
class Classification:
    """One answer, classified. ``temporary``: the answer itself was temporary (4xx SMTP,
    a retryable HTTP status); ``code`` / ``enhanced``: what the classification read."""

    klass: AnswerClass
    reason: str
    temporary: bool
    code: int | None = None
    enhanced: str | None = None

    @property
    def verdict(self) -> Verdict:
        if self.klass is AnswerClass.SENT:
            return "sent"
        if self.klass in (AnswerClass.THROTTLE, AnswerClass.TRANSIENT):
            return "retry"
        if self.klass is AnswerClass.SOFT and self.temporary:
            return "retry"
        return "failed"

    @property
    def is_bounce(self) -> bool:
        """Does it count against the address (hard or soft)?"""
        return self.klass in BOUNCE_CLASSES

    @property
    def is_throttle(self) -> bool:
        """Should the sender slow down (back off the server) rather than fail?"""
        return self.klass is AnswerClass.THROTTLE

    @property
    def failure_class(self) -> str | None:
        """The value stored in ``delivery_log.failure_class`` (``None`` when sent)."""
        return None if self.klass is AnswerClass.SENT else self.klass.value


SENT = Classification(AnswerClass.SENT, "", temporary=False)


def enhanced_code(text: str) -> str | None:
    """The first RFC 3463 enhanced status code (``5.1.1``) in a reply or DSN text."""
    match = _ENHANCED.search(text)
    return ".".join(match.groups()) if match else None


def _from_enhanced(enhanced: str) -> tuple[AnswerClass, str] | None:
    """RFC 3463 subject/detail -> class and reason; ``None`` for ``x.0.0`` (says nothing)."""
    cls_digit, subject, detail = (int(part) for part in enhanced.split("."))
    permanent = cls_digit == 5
    if subject == 1:  # addressing status
        if detail in (7, 8):  # sender's mailbox / system: ours, not the recipient's
            return AnswerClass.ERROR if permanent else AnswerClass.TRANSIENT, "sender_refused"
        if not permanent:
            return AnswerClass.SOFT, "user_unknown" if detail in (1, 6) else "undefined"
        reason = {1: "user_unknown", 2: "invalid_domain", 3: "invalid_address",
                  4: "user_unknown", 6: "user_unknown", 10: "invalid_domain"}.get(
                      detail, "user_unknown")
        return AnswerClass.HARD, reason
    if subject == 2:  # mailbox status
        if detail == 2:
            return AnswerClass.SOFT, "mailbox_full"
        if detail == 1:
            return (AnswerClass.HARD if permanent else AnswerClass.SOFT), "account_disabled"
        if detail in (3, 4):  # message too long, list expansion
            return (AnswerClass.ERROR if permanent else AnswerClass.TRANSIENT,
                    "message_error")
        if detail == 0 and not permanent:
            return AnswerClass.SOFT, "undefined"
        return None
    if subject == 3:  # mail system status
        if detail == 4:
            return AnswerClass.ERROR if permanent else AnswerClass.TRANSIENT, "message_error"
        if not permanent:
            return AnswerClass.TRANSIENT, "server_error"
        return (AnswerClass.SOFT, "undefined") if detail == 2 else (
            AnswerClass.ERROR, "server_error")
    if subject == 4:  # network and routing
        if permanent and detail == 4:
            return AnswerClass.HARD, "invalid_domain"
        return AnswerClass.SOFT, "unreachable"
    if subject in (5, 6):  # protocol, content: the message or our client
        return (AnswerClass.ERROR if permanent else AnswerClass.TRANSIENT), "message_error"
    if subject == 7:  # security or policy
        if permanent:
            return AnswerClass.POLICY, "refused"
        return AnswerClass.THROTTLE, "throttled"
    return None


def _from_basic(code: int, text: str) -> tuple[AnswerClass, str]:
    """RFC 5321 basic code, helped by the text when the code is ambiguous."""
    if code == 421:
        return AnswerClass.THROTTLE, "throttled"
    for pattern, klass, reason in _TEXT_HINTS:
        if pattern.search(text):
            return klass, reason
    if 400 <= code < 500:
        if code in (450, 452):
            return AnswerClass.SOFT, "mailbox_full" if code == 452 else "undefined"
        return AnswerClass.TRANSIENT, "server_error"
    if code in (551, 553):
        return AnswerClass.HARD, "user_unknown" if code == 551 else "invalid_address"
    if code == 552:
        return AnswerClass.SOFT, "mailbox_full"
    if code == 554:
        return AnswerClass.POLICY, "refused"
    if code == 550:
        # "Mailbox unavailable" without saying why: counts, but does not quarantine at once.
        return AnswerClass.SOFT, "undefined"
    return AnswerClass.ERROR, "message_error"


def classify_smtp(code: int, text: str | bytes = "", *, stage: str = "RCPT TO") -> Classification:
    """Classify an SMTP reply to ``stage`` (``MAIL FROM``, ``RCPT TO``, ``DATA``,
    ``session``). 2xx is :data:`SENT`. The enhanced code decides when it says something
    (``x.0.0`` does not), else the basic code with hints from the text."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if 200 <= code < 300:
        return SENT
    temporary = 400 <= code < 500
    enhanced = enhanced_code(text)
    decided = _from_enhanced(enhanced) if enhanced and enhanced[0] == str(code)[0] else None
    klass, reason = decided or _from_basic(code, text)
    if temporary:
        klass = _soften(klass)  # a 4xx reply is retried whatever its text says
    if not 400 <= code < 600:
        klass, reason = AnswerClass.ERROR, "undefined"
    if stage.upper() not in ("RCPT TO", "RCPT", "DATA") and klass in BOUNCE_CLASSES:
        # Our sender or our session was refused: the recipient is not to blame.
        klass = AnswerClass.TRANSIENT if temporary else AnswerClass.ERROR
        reason = "sender_refused"
    return Classification(klass, reason, temporary=temporary, code=code, enhanced=enhanced)


def _soften(klass: AnswerClass) -> AnswerClass:
    """A temporary answer is never final: hard counts as soft, the rest is retried."""
    return {AnswerClass.HARD: AnswerClass.SOFT, AnswerClass.POLICY: AnswerClass.THROTTLE,
            AnswerClass.ERROR: AnswerClass.TRANSIENT}.get(klass, klass)


def classify_dsn(status: str | None, diagnostic: str = "", action: str = "failed"
                 ) -> Classification:
    """Classify one recipient of a delivery status notification (RFC 3464): its
    ``Status`` (``5.1.1``), ``Diagnostic-Code`` text and ``Action``. A ``delayed`` action
    (or a ``4.x.x`` status) is temporary: soft at worst. A bounce without a status (not
    RFC 3464) is classified from its text, as a permanent ``550`` reply would be."""
    enhanced = enhanced_code(status or "") or enhanced_code(diagnostic)
    temporary = action.strip().lower() == "delayed" or (enhanced or "").startswith("4")
    decided = _from_enhanced(enhanced) if enhanced else None
    code_match = re.search(r"(?<![\d.])([245]\d\d)(?![\d.])", diagnostic)
    code = int(code_match.group(1)) if code_match else (450 if temporary else 550)
    if decided is None:
        decided = _from_basic(code, diagnostic)
    klass, reason = decided
    if temporary:
        klass = _soften(klass)
    return Classification(klass, reason, temporary=temporary, code=code, enhanced=enhanced)


# --- SMS gateways ----------------------------------------------------------------------

#: The gateway's ``code`` field (JSON body of a non-2xx answer) -> class and reason.
SMS_CODES: dict[str, tuple[AnswerClass, str]] = {
    "unknown_subscriber": (AnswerClass.HARD, "user_unknown"),
    "invalid_number": (AnswerClass.HARD, "invalid_address"),
    "number_not_allocated": (AnswerClass.HARD, "user_unknown"),
    "absent_subscriber": (AnswerClass.SOFT, "unreachable"),
    "handset_full": (AnswerClass.SOFT, "mailbox_full"),
    "unreachable": (AnswerClass.SOFT, "unreachable"),
    "blocked": (AnswerClass.POLICY, "refused"),
    "opted_out": (AnswerClass.POLICY, "refused"),
    "spam": (AnswerClass.POLICY, "refused"),
    "content_rejected": (AnswerClass.POLICY, "refused"),
    "throttled": (AnswerClass.THROTTLE, "throttled"),
}
#: HTTP statuses of a gateway that are retried (as HTTP defines them); 5xx too.
SMS_RETRY_STATUSES = frozenset({408, 425, 429})


def classify_sms(status: int, body: Any = None) -> Classification:
    """Classify an SMS gateway's HTTP answer: ``status`` and its parsed JSON ``body``
    (or ``None``). A ``code`` (or ``error_code``) of :data:`SMS_CODES` in the body
    decides; otherwise the status: 404 / 410 hard (no such number), 403 / 451 policy,
    429 throttle, 408 / 425 / 5xx transient, other 4xx error (the request was wrong)."""
    if 200 <= status < 300:
        return SENT
    temporary = status in SMS_RETRY_STATUSES or status >= 500
    code = None
    if isinstance(body, dict):
        raw = body.get("code") or body.get("error_code")
        code = str(raw).strip().lower() if raw is not None else None
    if code in SMS_CODES:
        klass, reason = SMS_CODES[code]
        temporary = klass in (AnswerClass.THROTTLE, AnswerClass.TRANSIENT) or (
            klass is AnswerClass.SOFT)
    elif status in (404, 410):
        klass, reason = AnswerClass.HARD, "user_unknown"
    elif status in (403, 451):
        klass, reason = AnswerClass.POLICY, "refused"
    elif status == 429:
        klass, reason = AnswerClass.THROTTLE, "throttled"
    elif temporary:
        klass, reason = AnswerClass.TRANSIENT, "server_error"
    else:
        klass, reason = AnswerClass.ERROR, "message_error"
    return Classification(klass, reason, temporary=temporary, code=status, enhanced=code)


def not_connected() -> Classification:
    """No answer at all (connection refused, lost, timed out): retried, not the address."""
    return Classification(AnswerClass.TRANSIENT, "not_connected", temporary=True)


def outcome_unknown() -> Classification:
    """The message was handed over and no answer came (connection lost or timed out after
    the final "." of SMTP DATA, or the worker died): failed, never retried."""
    return Classification(AnswerClass.UNKNOWN, "outcome_unknown", temporary=False)


def attachment_unavailable() -> Classification:
    """A URL attachment of the event could not be fetched this time (connection, HTTP
    error, time limit): retried like a soft error, not the address's fault."""
    return Classification(AnswerClass.TRANSIENT, "attachment_unavailable", temporary=True)


def message_error() -> Classification:
    """The message could not be built or has no template: failed, not the address."""
    return Classification(AnswerClass.ERROR, "message_error", temporary=False)
