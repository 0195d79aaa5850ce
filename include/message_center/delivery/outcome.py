"""The outcome of one delivery attempt, as the ledger records it.

Every channel answers with one of three verdicts, so the ledger and the retry policy
do not need to know about SMTP reply codes or HTTP statuses:

* ``sent``  - the provider accepted the message (``provider_id`` says which one it is);
* ``failed`` - permanent: retrying cannot help (5xx SMTP reply, 4xx HTTP client error,
  template error, missing template);
* ``retry`` - transient: the same message may succeed later (4xx SMTP reply, connection
  refused, timeout, 429/5xx from an HTTP gateway).

Each outcome also carries its :class:`~message_center.delivery.classification.Classification`
(hard / soft / policy / throttle / transient / error and a reason): the ledger records
it on the delivery log and quarantines addresses from it.

An outcome with ``counted=False`` (:meth:`Outcome.unavailable`) says the message never
reached the provider because the provider itself was unavailable (connection refused,
"service not available" to everyone, HTTP 503 with ``Retry-After``): the session pool
feeds it to the relay's circuit breaker (:mod:`message_center.delivery.breaker`) and
tries the same message again once the relay is back; if it gives up first, the ledger
gives the message back to the queue without counting a try.
"""

from __future__ import annotations

from dataclasses import dataclass

from message_center.delivery.classification import (
    SENT,
    Classification,
    Verdict,
    classify_smtp,
    message_error,
    not_connected,
    outcome_unknown,
)

MAX_ERROR_CHARS = 1000


@dataclass(frozen=True)
class Outcome:
    status: Verdict
    error: str | None = None
    provider_id: str | None = None
    classification: Classification | None = None
    #: False: the provider was unavailable and never got the message (not a try).
    counted: bool = True
    #: Seconds the provider asked us to wait (HTTP ``Retry-After``), if it said.
    retry_after: float | None = None

    @classmethod
    def sent(cls, provider_id: str | None) -> Outcome:
        return cls("sent", None, provider_id, SENT)

    @classmethod
    def failed(cls, error: str, classification: Classification | None = None) -> Outcome:
        """Permanent; without a classification: a problem of the message, not the address."""
        return cls("failed", error[:MAX_ERROR_CHARS], None, classification or message_error())

    @classmethod
    def retry(cls, error: str, classification: Classification | None = None) -> Outcome:
        """Transient; without a classification: no answer from the provider."""
        return cls("retry", error[:MAX_ERROR_CHARS], None, classification or not_connected())

    @classmethod
    def unavailable(cls, error: str, retry_after: float | None = None) -> Outcome:
        """The provider could not be reached or refused every message: not sent, and not
        a try of this message (the relay's circuit breaker decides when to try again)."""
        return cls("retry", error[:MAX_ERROR_CHARS], None, not_connected(), counted=False,
                   retry_after=retry_after)

    @classmethod
    def unknown(cls, error: str) -> Outcome:
        """Handed over, then no answer: it may have been delivered; never retried."""
        return cls("failed", error[:MAX_ERROR_CHARS], None, outcome_unknown())

    @classmethod
    def classified(cls, classification: Classification, error: str,
                   provider_id: str | None = None) -> Outcome:
        """The verdict the classification gives (sent / failed / retry)."""
        verdict = classification.verdict
        if verdict == "sent":
            return cls("sent", None, provider_id, classification)
        return cls(verdict, error[:MAX_ERROR_CHARS], None, classification)

    @property
    def failure_class(self) -> str | None:
        return self.classification.failure_class if self.classification else None

    @property
    def failure_reason(self) -> str | None:
        if self.classification is None or self.status == "sent":
            return None
        return self.classification.reason or None


def smtp_reply_outcome(stage: str, code: int, reply: bytes | str) -> Outcome:
    """A non-success SMTP reply, classified (RFC 3463 enhanced code, basic code, text):
    4xx is retried (greylisting, mailbox busy, slow down), 5xx (or anything unexpected)
    is permanent; the class says whether the address is to blame."""
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    error = f"SMTP {stage} refused: {code} {text}".strip()
    classification = classify_smtp(code, text, stage=stage)
    if classification.verdict == "sent":  # a 2xx where another one was expected
        return Outcome.failed(error)
    return Outcome.classified(classification, error)
