"""The outcome of one delivery attempt, as the ledger records it.

Every channel answers with one of three verdicts, so the ledger and the retry policy
do not need to know about SMTP reply codes or HTTP statuses:

* ``sent``  - the provider accepted the message (``provider_id`` says which one it is);
* ``failed`` - permanent: retrying cannot help (5xx SMTP reply, 4xx HTTP client error,
  template error, missing template);
* ``retry`` - transient: the same message may succeed later (4xx SMTP reply, connection
  refused, timeout, 429/5xx from an HTTP gateway).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Verdict = Literal["sent", "failed", "retry"]
MAX_ERROR_CHARS = 1000


@dataclass(frozen=True)
class Outcome:
    status: Verdict
    error: str | None = None
    provider_id: str | None = None

    @classmethod
    def sent(cls, provider_id: str | None) -> Outcome:
        return cls("sent", None, provider_id)

    @classmethod
    def failed(cls, error: str) -> Outcome:
        return cls("failed", error[:MAX_ERROR_CHARS])

    @classmethod
    def retry(cls, error: str) -> Outcome:
        return cls("retry", error[:MAX_ERROR_CHARS])


def smtp_reply_outcome(stage: str, code: int, reply: bytes | str) -> Outcome:
    """A non-success SMTP reply: 4xx is transient (greylisting, mailbox busy), the rest
    (5xx, or anything unexpected) is permanent."""
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    error = f"SMTP {stage} refused: {code} {text}".strip()
    return Outcome.retry(error) if 400 <= code < 500 else Outcome.failed(error)
