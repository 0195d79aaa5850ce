"""The relays' circuit breakers as the health check and the Overview page show them.

The breakers are written by the delivery (:mod:`message_center.delivery.breaker`, table
``relay_breaker``, one row per relay, migration ``e0007``); this module only reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, text


@dataclass(frozen=True)
class RelayHealth:
    """One relay's breaker: ``open`` means down (nothing attempted but the probes)."""

    relay: str
    channel: str
    state: str
    failures: int
    opened_at: datetime | None
    paused_until: datetime | None
    last_error: str | None
    last_failure: datetime | None
    last_success: datetime | None

    @property
    def down(self) -> bool:
        return self.state == "open"

    def to_dict(self) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return None if value is None else value.astimezone(UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z")
        return {"relay": self.relay, "channel": self.channel, "state": self.state,
                "down": self.down, "failures": self.failures, "openedAt": iso(self.opened_at),
                "pausedUntil": iso(self.paused_until), "lastError": self.last_error,
                "lastFailure": iso(self.last_failure), "lastSuccess": iso(self.last_success)}


def relay_health(conn: Connection, *, recent_days: float = 1.0) -> list[RelayHealth]:
    """Every relay whose breaker changed in the last ``recent_days`` (down first), for
    health checks: one nobody touched for that long (``smtp_default`` now points
    elsewhere) is left out; a relay that never failed has no row. None on an instance
    whose schema predates the breakers (migration ``e0007``)."""
    if conn.execute(text("SELECT to_regclass('relay_breaker')")).scalar() is None:
        return []
    rows = conn.execute(text("""
        SELECT relay, channel, state, failures, opened_at,
               CASE WHEN paused_until > clock_timestamp() THEN paused_until END
                   AS paused_until,
               last_error, last_failure, last_success
        FROM relay_breaker
        WHERE updated >= clock_timestamp() - make_interval(days => :days)
        ORDER BY state = 'open' DESC, relay
    """), {"days": int(recent_days) or 1}).mappings().all()
    return [RelayHealth(**dict(row)) for row in rows]
