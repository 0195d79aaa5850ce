"""Quarantine: the rules, the decisions made from bounces, and the manual decisions.

An address in quarantine is not sent to: its next event ends *Ignored by the delivery*
with the quarantine's reason (:func:`message_center.delivery.ledger.start_sending` reads
:data:`ACTIVE_SQL`). Decisions come from

* the delivery (:func:`record_bounces`, called by the ledger's ``finalize`` with the
  classified answers of a chunk, set-based);
* the bounce mailbox (asynchronous DSNs, same function, ``source="bounce_mail"``);
* people (:func:`add`, :func:`release`: ``mc quarantine``, the push API, the UI);
* the other instances (sharing: the newest decision wins, see ``updated``).

Rules, per channel (:class:`ChannelRules`): a **hard** bounce quarantines at once; a
**soft** bounce counts, and ``soft_threshold`` of them within ``soft_window_days``
quarantine; a quarantine made from bounces is released automatically after
``release_after_days`` (0: never). Bounces before the latest release do not count again.

A release is a decision too: the row stays, ``status = 'released'``, so that it reaches
the other instances. Email addresses are kept in lower case; SMS numbers as given,
without surrounding blanks (the delivery compares the event's address the same way).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, text

from message_center import audit
from message_center import channel as registry
from message_center.ids import to_public

SOURCES = ("delivery", "bounce_mail", "manual", "api", "ui", "synch")
STATUSES = ("quarantined", "released")
MAX_REASON_CHARS = 500

#: The condition the delivery uses to ignore an address (``q`` is the quarantine row).
ACTIVE_SQL = ("q.status = 'quarantined' AND (q.release_at IS NULL OR q.release_at > now())")

_RULE_BOUNDS: dict[str, tuple[float, float]] = {
    "soft_threshold": (1, 1000),
    "soft_window_days": (0.001, 3650),
    "release_after_days": (0, 36500),
}


@dataclass(frozen=True)
class ChannelRules:
    """The rules of one channel (see the module doc)."""

    soft_threshold: int = 3
    soft_window_days: float = 7.0
    release_after_days: float = 30.0

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"quarantine rule {item.name}: {value!r} is not a number")
            low, high = _RULE_BOUNDS[item.name]
            if not low <= value <= high:
                raise ValueError(f"quarantine rule {item.name}: {value} is outside "
                                 f"{low:g}..{high:g}")
        if int(self.soft_threshold) != self.soft_threshold:
            raise ValueError(f"quarantine rule soft_threshold: {self.soft_threshold} is not "
                             "a whole number")


class QuarantineRules:
    """The rules of every channel (:class:`ChannelRules` by channel name; a channel not
    given keeps the defaults); :meth:`from_mapping` reads the documented JSON."""

    __slots__ = ("_rules",)

    def __init__(self, **rules: ChannelRules) -> None:
        for channel, value in rules.items():
            _check_channel(channel, "unknown channel {channel!r} (expected one of {known})")
            if not isinstance(value, ChannelRules):
                raise ValueError(f"quarantine rules of {channel}: expected ChannelRules")
        object.__setattr__(self, "_rules", dict(rules))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("QuarantineRules is immutable")

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rules_from, (dict(self._rules),))

    def __getattr__(self, name: str) -> ChannelRules:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self.for_channel(name)
        except ValueError:
            raise AttributeError(name) from None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QuarantineRules):
            return NotImplemented
        names = {*self._rules, *other._rules}
        return all(self.for_channel(n) == other.for_channel(n) for n in names)

    def __hash__(self) -> int:
        return hash(tuple(sorted((n, r) for n, r in self._rules.items()
                                 if r != ChannelRules())))

    def __repr__(self) -> str:
        given = ", ".join(f"{n}={r!r}" for n, r in sorted(self._rules.items()))
        return f"QuarantineRules({given})"

    def for_channel(self, channel: str) -> ChannelRules:
        _check_channel(channel, "unknown channel {channel!r} (expected one of {known})")
        return self._rules.get(channel) or ChannelRules()

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | str | None,
                     where: str = "quarantine rules") -> QuarantineRules:
        """``{"email": {"soft_threshold": 3, "soft_window_days": 7, "release_after_days":
        30}, "<another channel>": {...}}`` (or that as JSON text); a missing channel or key
        keeps its default. Unknown channels or keys and bad values raise ``ValueError``
        naming them and ``where`` they come from."""
        if values is None or values == "":
            return cls()
        if isinstance(values, str):
            try:
                values = json.loads(values)
            except ValueError as exc:
                raise ValueError(f"{where}: not JSON: {exc}") from None
        known = registry.names()
        if not isinstance(values, Mapping):
            raise ValueError(f"{where}: expected an object with channels {known}")
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"{where}: unknown channel(s) {unknown} (expected {known})")
        channels: dict[str, ChannelRules] = {}
        for channel, raw in values.items():
            if not isinstance(raw, Mapping):
                raise ValueError(f"{where}: {channel}: expected an object")
            bad = sorted(set(raw) - set(_RULE_BOUNDS))
            if bad:
                raise ValueError(f"{where}: {channel}: unknown key(s) {bad} "
                                 f"(expected {sorted(_RULE_BOUNDS)})")
            try:
                channels[channel] = ChannelRules(**raw)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{where}: {channel}: {exc}") from None
        return cls(**channels)

    def as_arrays(self) -> dict[str, list[Any]]:
        """The rules as SQL array parameters (one element per channel)."""
        names = registry.names()
        rules = [self.for_channel(c) for c in names]
        return {"r_channel": list(names),
                "r_threshold": [int(r.soft_threshold) for r in rules],
                "r_window": [float(r.soft_window_days) for r in rules],
                "r_release": [float(r.release_after_days) for r in rules]}


def _rules_from(rules: dict[str, ChannelRules]) -> QuarantineRules:
    """Unpickling (the class is immutable)."""
    return QuarantineRules(**rules)


def _check_channel(channel: str | None, message: str) -> None:
    """Refuse a channel no registered channel answers to, with ``message``."""
    known = registry.names()
    if channel not in known:
        raise ValueError(message.format(channel=channel, known=", ".join(known)))


DEFAULT_RULES = QuarantineRules()


@dataclass(frozen=True)
class Bounce:
    """One answer that counts against an address (class ``hard`` or ``soft``)."""

    channel: str
    address: str
    failure_class: str
    failure_reason: str
    error: str | None
    delivery_log_id: int | None
    attempt: int = 0
    source: str = "delivery"


def normalize_address(channel: str, address: str) -> str:
    """The stored form of an address (the channel says which); a clear ``ValueError`` for
    one that cannot be."""
    _check_channel(channel, "channel {channel!r}: expected one of {known}")
    return registry.get(channel).normalize_address(address)


def _folds_case(channel: str) -> bool:
    """Whether the channel's addresses are kept in lower case (e-mail: they are)."""
    try:
        return registry.get(channel).address_case_insensitive
    except registry.UnknownChannelError:
        return False


def record_bounces(conn: Connection, bounces: Sequence[Bounce],
                   rules: QuarantineRules = DEFAULT_RULES, *,
                   cell: int | None = None) -> list[tuple[str, str]]:
    """Store the bounces (each once: a repeat is ignored) and quarantine the addresses
    they push over the rules, in two set-based statements. Returns the (channel,
    address) pairs quarantined by this call."""
    if not bounces:
        return []
    rows = [b for b in bounces if b.failure_class in ("hard", "soft") and b.address]
    if not rows:
        return []
    touched = conn.execute(text("""
        INSERT INTO bounce (channel, address, failure_class, failure_reason, error,
                            delivery_log_id, attempt, source)
        SELECT v.channel, CASE WHEN v.fold THEN lower(btrim(v.address))
                               ELSE btrim(v.address) END,
               v.class, v.reason, v.error, v.log_id, v.attempt, v.source
        FROM unnest(CAST(:channels AS text[]), CAST(:addresses AS text[]),
                    CAST(:classes AS text[]), CAST(:reasons AS text[]),
                    CAST(:errors AS text[]), CAST(:logs AS bigint[]),
                    CAST(:attempts AS int[]), CAST(:sources AS text[]),
                    CAST(:folds AS boolean[]))
             AS v(channel, address, class, reason, error, log_id, attempt, source, fold)
        ON CONFLICT (delivery_log_id, attempt, source) DO NOTHING
        RETURNING channel, address
    """), {"channels": [b.channel for b in rows], "addresses": [b.address for b in rows],
           "classes": [b.failure_class for b in rows],
           "reasons": [b.failure_reason for b in rows],
           "errors": [(b.error or "")[:MAX_REASON_CHARS] for b in rows],
           "logs": [b.delivery_log_id for b in rows], "attempts": [b.attempt for b in rows],
           "sources": [b.source for b in rows],
           "folds": [_folds_case(b.channel) for b in rows]}).all()
    if not touched:
        return []
    pairs = sorted({(r.channel, r.address) for r in touched})
    decided = conn.execute(text("""
        WITH rules AS (
            SELECT * FROM unnest(CAST(:r_channel AS text[]), CAST(:r_threshold AS int[]),
                                 CAST(:r_window AS float8[]), CAST(:r_release AS float8[]))
                     AS r(channel, threshold, window_days, release_days)
        ), touched AS (
            SELECT * FROM unnest(CAST(:t_channel AS text[]), CAST(:t_address AS text[]))
                     AS t(channel, address)
        ), counted AS (
            SELECT t.channel, t.address, r.threshold, r.window_days, r.release_days, c.*
            FROM touched t
            JOIN rules r ON r.channel = t.channel
            LEFT JOIN quarantine q ON q.channel = t.channel AND q.address = t.address
            CROSS JOIN LATERAL (
                SELECT count(*) FILTER (WHERE b.failure_class = 'hard') AS hard,
                       count(*) FILTER (WHERE b.failure_class = 'soft') AS soft,
                       (array_agg(b.failure_class ORDER BY b.failure_class = 'hard' DESC,
                                  b.at DESC, b.id DESC))[1] AS last_class,
                       (array_agg(b.failure_reason ORDER BY b.failure_class = 'hard' DESC,
                                  b.at DESC, b.id DESC))[1] AS last_reason,
                       (array_agg(b.error ORDER BY b.failure_class = 'hard' DESC,
                                  b.at DESC, b.id DESC))[1] AS last_error,
                       (array_agg(b.delivery_log_id ORDER BY b.failure_class = 'hard' DESC,
                                  b.at DESC, b.id DESC))[1] AS last_log,
                       (array_agg(b.source ORDER BY b.failure_class = 'hard' DESC,
                                  b.at DESC, b.id DESC))[1] AS last_source
                FROM bounce b
                WHERE b.channel = t.channel AND b.address = t.address
                  AND b.at > greatest(now() - make_interval(secs => r.window_days * 86400),
                                      q.released_at,
                                      CASE WHEN q.release_at <= now() THEN q.release_at END)
            ) c
            WHERE NOT coalesce(q.status = 'quarantined'
                               AND (q.release_at IS NULL OR q.release_at > now()), false)
        )
        INSERT INTO quarantine AS q (address, channel, reason, created, status, failure_class,
            failure_reason, bounce_count, delivery_log_id, source, decided_by, origin_cell,
            updated, release_at, released_at)
        SELECT address, channel,
               left(CASE WHEN hard > 0 THEN format('hard bounce (%s): %s', last_reason,
                                                   last_error)
                    ELSE format('%s soft bounces in %s days (last: %s): %s', soft,
                                window_days, last_reason, last_error) END, :max_reason),
               now(), 'quarantined', CASE WHEN hard > 0 THEN 'hard' ELSE 'soft' END,
               last_reason, hard + soft, last_log, last_source, NULL,
               coalesce(CAST(:cell AS smallint), (SELECT cell_id FROM mc_instance)),
               clock_timestamp(),
               CASE WHEN release_days > 0
                    THEN now() + make_interval(secs => release_days * 86400) END,
               NULL
        FROM counted
        WHERE hard > 0 OR soft >= threshold
        ON CONFLICT (channel, address) DO UPDATE SET
            reason = EXCLUDED.reason, created = EXCLUDED.created, status = 'quarantined',
            failure_class = EXCLUDED.failure_class, failure_reason = EXCLUDED.failure_reason,
            bounce_count = EXCLUDED.bounce_count, delivery_log_id = EXCLUDED.delivery_log_id,
            source = EXCLUDED.source, decided_by = NULL, origin_cell = EXCLUDED.origin_cell,
            updated = EXCLUDED.updated, release_at = EXCLUDED.release_at, released_at = NULL
        RETURNING q.channel, q.address
    """), {**rules.as_arrays(), "t_channel": [p[0] for p in pairs],
           "t_address": [p[1] for p in pairs], "max_reason": MAX_REASON_CHARS,
           "cell": cell}).all()
    return [(r.channel, r.address) for r in decided]


def instance_cell(conn: Connection) -> int | None:
    """This database's cell id (execution instances), ``None`` on the control instance."""
    if not conn.execute(text("SELECT to_regclass('mc_instance') IS NOT NULL")).scalar_one():
        return None
    return conn.execute(text("SELECT cell_id FROM mc_instance")).scalar()


def add(conn: Connection, channel: str, address: str, reason: str, *, source: str = "manual",
        decided_by: str | None = None, release_after_days: float | None = None,
        cell: int | None = None) -> dict[str, Any]:
    """Quarantine an address by hand (idempotent: an active quarantine gets the new reason
    and decision time). Returns the row."""
    address = normalize_address(channel, address)
    reason = (reason or "").strip() or "quarantined by hand"
    if source not in SOURCES:
        raise ValueError(f"source {source!r}: expected one of {', '.join(SOURCES)}")
    if release_after_days is not None and not 0 < release_after_days <= 36500:
        raise ValueError(f"release after {release_after_days} days: expected 0 < days <= 36500")
    if cell is None:
        cell = instance_cell(conn)
    row = conn.execute(text("""
        INSERT INTO quarantine AS q (address, channel, reason, status, failure_class,
            failure_reason, bounce_count, source, decided_by, origin_cell, updated,
            release_at, released_at)
        VALUES (:address, :channel, :reason, 'quarantined', 'manual', NULL, 0, :source,
                :by, CAST(:cell AS smallint), clock_timestamp(),
                CASE WHEN CAST(:days AS float8) IS NOT NULL
                     THEN now() + make_interval(secs => CAST(:days AS float8) * 86400) END,
                NULL)
        ON CONFLICT (channel, address) DO UPDATE SET
            reason = EXCLUDED.reason, status = 'quarantined', failure_class = 'manual',
            failure_reason = NULL, source = EXCLUDED.source, decided_by = EXCLUDED.decided_by,
            origin_cell = EXCLUDED.origin_cell, updated = EXCLUDED.updated,
            release_at = EXCLUDED.release_at, released_at = NULL,
            created = CASE WHEN q.status = 'quarantined' THEN q.created ELSE now() END
        RETURNING q.*
    """), {"address": address, "channel": channel, "reason": reason[:MAX_REASON_CHARS],
           "source": source, "by": decided_by, "cell": cell,
           "days": release_after_days}).mappings().one()
    audit.record(conn, actor=decided_by, action=audit.QUARANTINE_ADD,
                 target=f"{channel} {address}", details={
                     "reason": reason[:MAX_REASON_CHARS], "source": source,
                     "releaseAfterDays": release_after_days})
    return _public(row)


def release(conn: Connection, channel: str, address: str, *, source: str = "manual",
            decided_by: str | None = None, cell: int | None = None) -> dict[str, Any] | None:
    """Release an address (kept as a ``released`` decision, so it can be shared). Returns
    the row, or ``None`` when the address was never quarantined. Releasing a released
    address changes nothing (idempotent)."""
    address = normalize_address(channel, address)
    if cell is None:
        cell = instance_cell(conn)
    row = conn.execute(text("""
        UPDATE quarantine SET status = 'released', released_at = clock_timestamp(),
               updated = clock_timestamp(), source = :source, decided_by = :by,
               origin_cell = CAST(:cell AS smallint)
        WHERE channel = :channel AND address = :address
          AND (status = 'quarantined')
        RETURNING *
    """), {"channel": channel, "address": address, "source": source, "by": decided_by,
           "cell": cell}).mappings().one_or_none()
    if row is None:
        return get(conn, channel, address)
    audit.record(conn, actor=decided_by, action=audit.QUARANTINE_RELEASE,
                 target=f"{channel} {address}", details={"source": source})
    return _public(row)


def get(conn: Connection, channel: str, address: str) -> dict[str, Any] | None:
    """The quarantine record of one address (active, expired or released), or ``None``."""
    address = normalize_address(channel, address)
    row = conn.execute(text("SELECT * FROM quarantine WHERE channel = :c AND address = :a"),
                       {"c": channel, "a": address}).mappings().one_or_none()
    return None if row is None else _public(row)


def list_quarantine(conn: Connection, *, channel: str | None = None, status: str = "active",
                    address: str | None = None, failure_class: str | None = None,
                    since: datetime | None = None, limit: int = 100,
                    offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Quarantine records, newest decision first, and how many match in all.

    ``status``: ``active`` (in force now), ``released`` (released by hand or
    automatically), ``all``. ``address``: a case-insensitive substring. ``since``: decided
    at or after."""
    if status not in ("active", "released", "all"):
        raise ValueError(f"status {status!r}: expected active, released or all")
    if channel is not None:
        _check_channel(channel, "channel {channel!r}: expected one of {known}")
    if failure_class is not None and failure_class not in ("hard", "soft", "manual"):
        raise ValueError(f"class {failure_class!r}: expected hard, soft or manual")
    if not 1 <= limit <= 10_000 or offset < 0:
        raise ValueError("limit must be 1..10000 and offset >= 0")
    where = ["true"]
    if status == "active":
        where.append(ACTIVE_SQL)
    elif status == "released":
        where.append(f"NOT ({ACTIVE_SQL})")
    if channel:
        where.append("q.channel = :channel")
    if address:
        where.append("q.address ILIKE :pattern ESCAPE '\\'")
    if failure_class:
        where.append("q.failure_class = :class")
    if since is not None:
        where.append("q.updated >= :since")
    pattern = "%" + (address or "").replace("\\", "\\\\").replace("%", "\\%").replace(
        "_", "\\_") + "%"
    params = {"channel": channel, "pattern": pattern, "class": failure_class,
              "since": since, "limit": limit, "offset": offset}
    condition = " AND ".join(where)
    total = conn.execute(text(f"SELECT count(*) FROM quarantine q WHERE {condition}"),
                         params).scalar_one()
    rows = conn.execute(text(f"""
        SELECT q.* FROM quarantine q WHERE {condition}
        ORDER BY q.updated DESC, q.channel, q.address LIMIT :limit OFFSET :offset
    """), params).mappings().all()
    return [_public(row) for row in rows], int(total)


def _public(row: Mapping[str, Any]) -> dict[str, Any]:
    """A record as shown to people and the API: ``active`` says whether it is in force."""
    record = dict(row)
    release_at = record.get("release_at")
    record["active"] = record.get("status") == "quarantined" and (
        release_at is None or release_at > _db_now(release_at))
    return record


def _db_now(reference: datetime) -> datetime:
    now = datetime.now(UTC)
    return now if reference.tzinfo else now.replace(tzinfo=None)


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def api_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A quarantine record in the push API's shape (camelCase, ISO 8601 UTC times, public
    delivery-log id)."""
    log_id = record.get("delivery_log_id")
    return {
        "channel": record["channel"], "address": record["address"],
        "status": record["status"], "active": bool(record["active"]),
        "reason": record["reason"], "failureClass": record["failure_class"],
        "failureReason": record["failure_reason"], "bounceCount": record["bounce_count"],
        "source": record["source"], "decidedBy": record["decided_by"],
        "originCell": record["origin_cell"],
        "deliveryLogId": to_public(log_id) if log_id is not None else None,
        "created": _iso(record["created"]), "updated": _iso(record["updated"]),
        "releaseAt": _iso(record["release_at"]), "releasedAt": _iso(record["released_at"]),
    }
