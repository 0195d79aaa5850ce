"""Live figures of one execution instance for the UI's overview: read-only, bounded.

Every query reads an index range bounded by what is in flight, never the history: the
due pending events (partial index ``<kind>_event_due_idx``, the same figures as
``GET /message-center/v1/health``) and the messages sent in the last hour (partial index
``delivery_log_sent_at_idx``, migration ``e0003``), and the relays' circuit breakers
(``relay_breaker``, one row per relay).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, text

from message_center.events import queue_depths
from message_center.reporting.relays import RelayHealth, relay_health
from message_center.reporting.thresholds import health_age_limits, health_limits, health_status

DEFAULT_TIMEOUT_S = 5.0

_SENT_LAST_HOUR = text("""
    SELECT count(*) FROM delivery_log
    WHERE sent_at IS NOT NULL AND sent_at >= now() - interval '1 hour'
""")


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class InstanceLive:
    cell_id: int | None
    checked_at: datetime
    rt_pending: int
    batch_pending: int
    oldest_rt_pending_age: float | None
    oldest_batch_pending_age: float | None
    sent_last_hour: int
    warning: int
    alert: int
    age_warning: float = 300.0
    age_alert: float = 900.0
    relays: tuple[RelayHealth, ...] = ()

    @property
    def relays_down(self) -> list[str]:
        return [relay.relay for relay in self.relays if relay.down]

    def _health(self) -> tuple[str, str]:
        return health_status(self.rt_pending, self.oldest_rt_pending_age, self.relays_down,
                             warning=self.warning, alert=self.alert,
                             age_warning=self.age_warning, age_alert=self.age_alert)

    @property
    def status(self) -> str:
        return self._health()[0]

    @property
    def message(self) -> str:
        """ACC mcPing style, as ``/v1/health``: ``Ok / <date> / 7/400 pending events``
        (then what else raised it, in parentheses: the queue's age, a relay down)."""
        status, detail = self._health()
        word = {"ok": "Ok", "warning": "Warning", "alert": "Error"}[status]
        return (f"{word} / {_iso(self.checked_at)} / {self.rt_pending}/{self.alert} pending "
                f"events" + (f" ({detail})" if detail else ""))

    def to_dict(self) -> dict[str, Any]:
        return {"cellId": self.cell_id, "checkedAt": _iso(self.checked_at),
                "rtPending": self.rt_pending, "batchPending": self.batch_pending,
                "oldestRtPendingAgeSeconds": self.oldest_rt_pending_age,
                "oldestBatchPendingAgeSeconds": self.oldest_batch_pending_age,
                "sentLastHour": self.sent_last_hour, "status": self.status,
                "message": self.message, "warningThreshold": self.warning,
                "alertThreshold": self.alert, "ageWarningSeconds": self.age_warning,
                "ageAlertSeconds": self.age_alert,
                "relays": [relay.to_dict() for relay in self.relays],
                "relaysDown": self.relays_down}


def instance_live(conn: Connection, *, warning: int | None = None, alert: int | None = None,
                  thresholds: Any = None, now: datetime | None = None) -> InstanceLive:
    """The live figures of the execution database behind ``conn`` (in the caller's
    transaction). Thresholds: ``warning`` / ``alert``, or any object with ``.warning``
    and ``.alert`` (the push API's ``HealthThresholds``), else ``MC_HEALTH_WARNING`` /
    ``MC_HEALTH_ALERT``."""
    age_warning, age_alert = health_age_limits()
    if thresholds is not None:
        warning = thresholds.warning if warning is None else warning
        alert = thresholds.alert if alert is None else alert
        age_warning = getattr(thresholds, "age_warning", age_warning)
        age_alert = getattr(thresholds, "age_alert", age_alert)
    default_warning, default_alert = health_limits()
    depths = queue_depths(conn)
    cell_id = conn.execute(text("SELECT cell_id FROM mc_instance")).scalar()
    sent = conn.execute(_SENT_LAST_HOUR).scalar_one()
    return InstanceLive(
        cell_id=None if cell_id is None else int(cell_id),
        checked_at=now or datetime.now(UTC),
        rt_pending=depths["rt"].pending, batch_pending=depths["batch"].pending,
        oldest_rt_pending_age=depths["rt"].oldest_pending_age,
        oldest_batch_pending_age=depths["batch"].oldest_pending_age,
        sent_last_hour=int(sent),
        warning=default_warning if warning is None else warning,
        alert=default_alert if alert is None else alert,
        age_warning=age_warning, age_alert=age_alert, relays=tuple(relay_health(conn)))


def read_instance_live(engine: Engine, *, timeout_seconds: float = DEFAULT_TIMEOUT_S,
                       warning: int | None = None, alert: int | None = None,
                       thresholds: Any = None) -> InstanceLive:
    """:func:`instance_live` in a read-only transaction of its own, every statement
    cancelled after ``timeout_seconds`` (an overloaded instance must not hang the page).
    Connection errors propagate (``sqlalchemy.exc.OperationalError``)."""
    with engine.connect() as conn:
        conn.execute(text("SET TRANSACTION READ ONLY"))
        conn.execute(text("SELECT set_config('statement_timeout', :ms, true)"),
                     {"ms": str(int(timeout_seconds * 1000))})
        try:
            return instance_live(conn, warning=warning, alert=alert, thresholds=thresholds)
        finally:
            conn.rollback()
