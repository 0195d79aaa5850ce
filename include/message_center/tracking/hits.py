"""Recording tracking hits: in memory first, written in batches (a hit never waits for a
commit of its own), every hit kept, machine activity flagged.

:class:`HitWriter` collects hits and a background thread writes them every
``flush_seconds`` (or sooner when ``flush_rows`` are waiting), one transaction per batch:
the ``tracking_log`` rows (the message's template and sending time joined from the
delivery log: a hit of a message purged meanwhile is dropped), then the first open of
each message and the first click of each link (``tracking_first``), and for each first
the ``event.opened`` / ``event.clicked`` webhook messages (a transactional outbox: a
message exists if and only if the hit that caused it was recorded).

People and machines are counted apart, so there are two firsts of each: the first
*human* open (``tracking_first.kind`` ``open``; ``click`` for a link) and the first
*automated* one (``open:automated``, ``click:automated``: an image proxy's prefetch, a link
scanner), whose webhook says ``"automated": true``. A subscriber that ignores automated
messages still gets the person's first open when it comes after a proxy's prefetch.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Engine, text

from message_center import webhook_outbox

log = logging.getLogger(__name__)

MAX_USER_AGENT_CHARS = 300
#: How long a hit batch waits for an event's row lock before it yields (see write_hits).
LOCK_WAIT = "250ms"
#: SQLSTATE of a lock not obtained within ``lock_timeout``.
LOCK_NOT_AVAILABLE = "55P03"

# Known machine agents: image proxies that prefetch every image of a message, and the
# link scanners of mail security gateways. Matched case-insensitively on the User-Agent.
_AGENTS: Sequence[tuple[re.Pattern[str], str]] = [
    (re.compile(p, re.I), reason) for p, reason in (
        (r"GoogleImageProxy|ggpht\.com", "Gmail image proxy"),
        (r"YahooMailProxy", "Yahoo image proxy"),
        (r"^Mozilla/5\.0$", "Apple Mail Privacy Protection (prefetch)"),
        (r"Barracuda|Proofpoint|Mimecast|Symantec|Trend ?Micro|FireEye|Forcepoint"
         r"|SafeLinks|Microsoft Office Protocol Discovery",
         "link scanner (mail security gateway)"),
        (r"bot\b|crawler|spider|slurp|facebookexternalhit|preview", "bot or link preview"),
        (r"^(curl|wget|python-requests|Go-http-client|Java/|libwww|okhttp)", "HTTP library"),
    )]


@functools.lru_cache(maxsize=4096)
def agent_reason(user_agent: str) -> str | None:
    """Why a user agent looks like a machine's (remembered: a tracking server sees the
    same few agents over and over, and the patterns cost more than the rest of a hit)."""
    for pattern, reason in _AGENTS:
        if pattern.search(user_agent):
            return reason
    return None


def automated_reason(*, method: str, user_agent: str | None, seconds_after_sending: float | None,
                     scanner_seconds: float) -> str | None:
    """Why a hit looks like a machine's (None: a person's, as far as one can tell)."""
    if method == "HEAD":
        return "HEAD request"
    if not user_agent:
        return "no user agent"
    reason = agent_reason(user_agent[:MAX_USER_AGENT_CHARS])
    if reason is not None:
        return reason
    if seconds_after_sending is not None and 0 <= seconds_after_sending < scanner_seconds:
        return f"within {scanner_seconds:g} s of delivery"
    return None


class Hit(NamedTuple):
    """One hit as the tracking server saw it (a tuple: made once per request)."""

    log_id: int
    kind: str  # open | click | mirror | unsubscribe
    at: datetime
    link: int | None = None
    url: str | None = None
    automated_reason: str | None = None
    user_agent: str | None = None


#: The suffix of ``tracking_first.kind`` for the first automated hit of a kind.
AUTOMATED_FIRST = ":automated"
#: One statement per batch: the hits (joined to their message: a hit of a message purged
#: meanwhile is dropped), the firsts among them; returns how many hits were written and
#: the firsts that are new (usually none: only those go back to Python).
_WRITE = """
    WITH h AS (
        SELECT * FROM unnest(CAST(:logs AS bigint[]), CAST(:kinds AS text[]),
                             CAST(:links AS int[]), CAST(:urls AS text[]),
                             CAST(:ats AS timestamptz[]), CAST(:reasons AS text[]),
                             CAST(:agents AS text[])) WITH ORDINALITY
             AS h(log_id, kind, link, url, at, reason, agent, n)
    ), ins AS (
        INSERT INTO tracking_log (delivery_log_id, event_kind, event_id, template_name,
            template_version, sent_at, kind, link, url, at, automated, automated_reason,
            user_agent)
        SELECT d.id, d.event_kind, d.event_id, d.template_name, d.template_version, d.sent_at,
               h.kind, h.link, h.url, h.at, h.reason IS NOT NULL, h.reason, h.agent
        FROM h JOIN delivery_log d ON d.id = h.log_id
        ORDER BY h.n
        RETURNING id, delivery_log_id, event_kind, event_id, kind, link, url, at, automated,
                  automated_reason
    ), firsts AS (
        INSERT INTO tracking_first (delivery_log_id, kind, link, at, tracking_log_id)
        SELECT DISTINCT ON (delivery_log_id, first_kind, first_link)
               delivery_log_id, first_kind, first_link, at, id
        FROM (SELECT i.*, i.kind || CASE WHEN i.automated THEN :automated_first ELSE '' END
                          AS first_kind,
                     coalesce(i.link, -1) AS first_link
              FROM ins i WHERE i.kind IN ('open', 'click')) f
        ORDER BY delivery_log_id, first_kind, first_link, at, id
        ON CONFLICT DO NOTHING
        RETURNING tracking_log_id
    )
    SELECT w.written, n.* FROM (SELECT count(*) AS written FROM ins) w
    LEFT JOIN (SELECT i.* FROM ins i JOIN firsts f ON f.tracking_log_id = i.id) n ON true
    ORDER BY n.id
"""
_WEBHOOK = {"open": webhook_outbox.OPENED, "click": webhook_outbox.CLICKED}


def write_hits(engine: Engine, hits: Sequence[Hit]) -> int:
    """One batch in one transaction (the hits, their firsts, the firsts' webhook
    messages); returns the rows written."""
    if not hits:
        return 0
    logs, kinds, ats, links, urls, reasons, agents = zip(*hits, strict=True)
    with engine.begin() as conn:
        rows = conn.execute(text(_WRITE), {
            "logs": list(logs), "kinds": list(kinds), "links": list(links),
            "urls": list(urls), "ats": list(ats), "reasons": list(reasons),
            "agents": [(a or "")[:MAX_USER_AGENT_CHARS] or None for a in agents],
            "automated_first": AUTOMATED_FIRST,
        }).all()
        new = [r for r in rows if r.id is not None]
        if new and webhook_outbox.active(conn):
            # The messages raise their events' counters under the events' row locks,
            # which the delivery's writers hold too (a recorder's group, a status copy):
            # the tracking yields - it waits at most LOCK_WAIT for a row, then the batch
            # is rolled back and kept for the next try - so the delivery never waits on
            # a hit batch for long nor loses a deadlock to one.
            conn.execute(text("SELECT set_config('lock_timeout', :wait, true)"),
                         {"wait": LOCK_WAIT})
            webhook_outbox.enqueue_many(conn, [_report(r) for r in new])
    return int(rows[0].written)


def _report(row: Any) -> webhook_outbox.Report:
    """The ``event.opened`` / ``event.clicked`` message of a first hit."""
    extra: dict[str, Any] = {"automated": bool(row.automated),
                             "automatedReason": row.automated_reason}
    if row.kind == "click":
        extra.update(link=row.link, url=row.url)
    return webhook_outbox.Report(row.event_kind, int(row.event_id), _WEBHOOK[row.kind],
                                 extra, row.at)


class HitWriter:
    """Hits kept in memory and written in batches by one background thread."""

    def __init__(self, engine: Engine, *, flush_seconds: float = 0.5,
                 flush_rows: int = 1000) -> None:
        self.engine, self.flush_seconds, self.flush_rows = engine, flush_seconds, flush_rows
        self._pending: list[Hit] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self.written = 0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tracking-hits", daemon=True)
        self._thread.start()

    def add(self, hit: Hit) -> None:
        with self._lock:
            self._pending.append(hit)
            if self._idle.is_set():
                self._idle.clear()
            if len(self._pending) >= self.flush_rows:
                self._wake.set()

    def _take(self) -> list[Hit]:
        with self._lock:
            batch, self._pending = self._pending, []
            return batch

    def flush(self) -> int:
        batch = self._take()
        try:
            written = write_hits(self.engine, batch)
        except Exception as exc:  # the database is down or busy: keep them for the next try
            if getattr(getattr(exc, "orig", None), "pgcode", None) == LOCK_NOT_AVAILABLE:
                log.warning("tracking hits not written yet: their events are being changed "
                            "(%d kept for the next try)", len(batch))
            else:
                log.exception("tracking hits not written (%d kept for the next try)",
                              len(batch))
            with self._lock:
                self._pending[:0] = batch[-100_000:]
            return 0
        self.written += written
        with self._lock:
            if not self._pending:
                self._idle.set()
        return written

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Until every hit received so far is written (tests, shutdown)."""
        self._wake.set()
        return self._idle.wait(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            self.flush()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.flush()
