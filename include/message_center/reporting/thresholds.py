"""Warning and alert thresholds of the report indicators (ACC's Message Center options).

In ACC they are options set in the deployment wizard (``MC_RtEventAvgQueueTimeWarning``,
...); here they are environment variables of the Airflow API server with the same
names, read when the UI starts (:func:`load_thresholds`). A value at or above the
warning threshold is *warning* (orange), at or above the alert threshold *alert* (red),
as for ``GET /message-center/v1/health``.

| indicator | variables (``...Warning`` / ``...Alert``) | unit | default |
| --- | --- | --- | --- |
| average time in the real-time queue | ``MC_RtEventAvgQueueTime...`` | s | 5 / 30 |
| average sending (MTA) time | ``MC_RtEventAvgDeliveryTime...`` | s | 5 / 30 |
| average total processing time | ``MC_RtEventAvgProcessingTime...`` | s | 10 / 60 |
| error rate | ``MC_RtEventError...`` | % | 5 / 20 |
| queued real-time events | ``MC_RtEventQueue...`` | events | as the health check |

(The health check's are ``MC_HEALTH_WARNING`` / ``MC_HEALTH_ALERT``, 100 / 400 due
real-time events, and ``MC_HEALTH_AGE_WARNING`` / ``MC_HEALTH_AGE_ALERT``, 300 / 900 s
for the oldest of them: a queue that does not move - a relay down - raises the health
by its age even while it is short; see :func:`health_status`.)
ACC's own default values are not published; these are ours: a real-time message should
leave within seconds, and the queue thresholds are those of the health check.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

LEVELS = ("none", "ok", "warning", "alert")
HEALTH_WARNING_ENV, HEALTH_ALERT_ENV = "MC_HEALTH_WARNING", "MC_HEALTH_ALERT"
DEFAULT_HEALTH_WARNING, DEFAULT_HEALTH_ALERT = 100, 400
HEALTH_AGE_WARNING_ENV, HEALTH_AGE_ALERT_ENV = "MC_HEALTH_AGE_WARNING", "MC_HEALTH_AGE_ALERT"
DEFAULT_HEALTH_AGE_WARNING, DEFAULT_HEALTH_AGE_ALERT = 300.0, 900.0


class ThresholdError(ValueError):
    """A threshold variable has a bad value; ``variable`` names it."""

    def __init__(self, variable: str, message: str) -> None:
        self.variable = variable
        super().__init__(f"{variable}: {message}")


def classify(value: float | None, warning: float, alert: float) -> str:
    """``"alert"`` from ``alert`` on, ``"warning"`` from ``warning`` on, else ``"ok"``;
    ``"none"`` when there is no value (nothing to measure in the period)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "none"
    if value >= alert:
        return "alert"
    if value >= warning:
        return "warning"
    return "ok"


@dataclass(frozen=True)
class Limit:
    """One indicator's thresholds, in the unit the reports use (ms, ratio 0-1, events)."""

    warning: float
    alert: float
    unit: str
    label: str
    warning_env: str
    alert_env: str
    env_unit: str  # the unit of the environment variables (s, %, events)

    def level(self, value: float | None) -> str:
        return classify(value, self.warning, self.alert)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "warning": self.warning, "alert": self.alert,
                "unit": self.unit, "env": {"warning": self.warning_env,
                                           "alert": self.alert_env, "unit": self.env_unit}}


@dataclass(frozen=True)
class Indicator:
    """A report figure with its thresholds and its level (what the pages colour)."""

    value: float | None
    unit: str
    level: str
    warning: float
    alert: float
    label: str

    @classmethod
    def of(cls, value: float | None, limit: Limit) -> Indicator:
        return cls(value, limit.unit, limit.level(value), limit.warning, limit.alert,
                   limit.label)

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "unit": self.unit, "level": self.level,
                "warning": self.warning, "alert": self.alert, "label": self.label}


# attribute, label, report unit, env warning, env alert, env unit, factor env -> report
_OPTIONS: tuple[tuple[str, str, str, str, str, str, float, float, float], ...] = (
    ("avg_queue_ms", "Average time in the queue", "ms", "MC_RtEventAvgQueueTimeWarning",
     "MC_RtEventAvgQueueTimeAlert", "s", 1000.0, 5, 30),
    ("avg_sending_ms", "Average sending time", "ms", "MC_RtEventAvgDeliveryTimeWarning",
     "MC_RtEventAvgDeliveryTimeAlert", "s", 1000.0, 5, 30),
    ("avg_total_ms", "Average processing time", "ms", "MC_RtEventAvgProcessingTimeWarning",
     "MC_RtEventAvgProcessingTimeAlert", "s", 1000.0, 10, 60),
    ("error_rate", "Error rate", "ratio", "MC_RtEventErrorWarning", "MC_RtEventErrorAlert",
     "%", 0.01, 5, 20),
    ("queue_size", "Queued real-time events", "events", "MC_RtEventQueueWarning",
     "MC_RtEventQueueAlert", "events", 1.0, DEFAULT_HEALTH_WARNING, DEFAULT_HEALTH_ALERT),
)


def _limit(spec: tuple[str, str, str, str, str, str, float, float, float],
           warning: float | None = None, alert: float | None = None) -> Limit:
    _, label, unit, w_env, a_env, env_unit, factor, w_default, a_default = spec
    return Limit(warning=(w_default if warning is None else warning) * factor,
                 alert=(a_default if alert is None else alert) * factor, unit=unit,
                 label=label, warning_env=w_env, alert_env=a_env, env_unit=env_unit)


@dataclass(frozen=True)
class Thresholds:
    """Every indicator's :class:`Limit`; ``Thresholds()`` holds the defaults."""

    avg_queue_ms: Limit = field(default_factory=lambda: _limit(_OPTIONS[0]))
    avg_sending_ms: Limit = field(default_factory=lambda: _limit(_OPTIONS[1]))
    avg_total_ms: Limit = field(default_factory=lambda: _limit(_OPTIONS[2]))
    error_rate: Limit = field(default_factory=lambda: _limit(_OPTIONS[3]))
    queue_size: Limit = field(default_factory=lambda: _limit(_OPTIONS[4]))

    def to_dict(self) -> dict[str, Any]:
        return {"avgQueueMs": self.avg_queue_ms.to_dict(),
                "avgSendingMs": self.avg_sending_ms.to_dict(),
                "avgTotalMs": self.avg_total_ms.to_dict(),
                "errorRate": self.error_rate.to_dict(),
                "queueSize": self.queue_size.to_dict()}


def _number(env: Mapping[str, str], name: str, *, percent: bool = False,
            whole: bool = False) -> float | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ThresholdError(name, f"must be a number; got {raw!r}") from None
    if math.isnan(value) or math.isinf(value) or value < 0:
        raise ThresholdError(name, f"must be a finite number >= 0; got {raw!r}")
    if percent and value > 100:
        raise ThresholdError(name, f"is a percentage (0-100); got {raw!r}")
    if whole and value != int(value):
        raise ThresholdError(name, f"must be a whole number; got {raw!r}")
    return value


def health_limits(environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """``(warning, alert)`` pending real-time events of the health check
    (``MC_HEALTH_WARNING`` / ``MC_HEALTH_ALERT``, 100 / 400)."""
    env = os.environ if environ is None else environ
    warning = _number(env, HEALTH_WARNING_ENV, whole=True)
    alert = _number(env, HEALTH_ALERT_ENV, whole=True)
    w = int(DEFAULT_HEALTH_WARNING if warning is None else warning)
    a = int(DEFAULT_HEALTH_ALERT if alert is None else alert)
    if not 0 < w <= a:
        raise ThresholdError(HEALTH_WARNING_ENV, f"health thresholds need 0 < warning <= "
                             f"alert; got warning={w}, alert={a}")
    return w, a


def health_age_limits(environ: Mapping[str, str] | None = None) -> tuple[float, float]:
    """``(warning, alert)`` age in seconds of the oldest due real-time event
    (``MC_HEALTH_AGE_WARNING`` / ``MC_HEALTH_AGE_ALERT``, 300 / 900)."""
    env = os.environ if environ is None else environ
    warning = _number(env, HEALTH_AGE_WARNING_ENV)
    alert = _number(env, HEALTH_AGE_ALERT_ENV)
    w = DEFAULT_HEALTH_AGE_WARNING if warning is None else warning
    a = DEFAULT_HEALTH_AGE_ALERT if alert is None else alert
    if not 0 < w <= a:
        raise ThresholdError(HEALTH_AGE_WARNING_ENV, f"queue age thresholds need 0 < warning "
                             f"<= alert; got warning={w:g}, alert={a:g}")
    return w, a


_ORDER = {"none": 0, "ok": 0, "warning": 1, "alert": 2}


def health_status(pending: int, oldest_age: float | None, relays_down: list[str], *,
                  warning: float, alert: float, age_warning: float, age_alert: float
                  ) -> tuple[str, str]:
    """The health of an execution instance (``ok`` / ``warning`` / ``alert``) and what
    besides the queue depth made it so (empty, or e.g. ``oldest waiting 412 s; relay
    smtp://mail:25 down``): the worst of the due real-time events against
    ``warning`` / ``alert``, the age of the oldest against ``age_warning`` /
    ``age_alert``, and *warning* while a relay's circuit breaker is open."""
    by_depth = classify(pending, warning, alert)
    by_age = classify(oldest_age, age_warning, age_alert)
    levels = [by_depth, by_age, "warning" if relays_down else "ok"]
    status = max(levels, key=_ORDER.__getitem__)
    details = []
    if _ORDER[by_age] and oldest_age is not None:
        details.append(f"oldest waiting {oldest_age:.0f} s")
    if relays_down:
        details.append(f"relay {', '.join(relays_down)} down")
    return ("ok" if status == "none" else status), "; ".join(details)


def load_thresholds(environ: Mapping[str, str] | None = None) -> Thresholds:
    """The thresholds from the environment (unset or empty: the default). A bad value
    raises :class:`ThresholdError` naming the variable."""
    env = os.environ if environ is None else environ
    limits: dict[str, Limit] = {}
    for spec in _OPTIONS:
        attribute, w_env, a_env, env_unit = spec[0], spec[3], spec[4], spec[5]
        percent, whole = env_unit == "%", env_unit == "events"
        warning = _number(env, w_env, percent=percent, whole=whole)
        alert = _number(env, a_env, percent=percent, whole=whole)
        if attribute == "queue_size":  # defaults: the health check's thresholds
            health_w, health_a = health_limits(env)
            warning = health_w if warning is None else warning
            alert = health_a if alert is None else alert
        limit = _limit(spec, warning, alert)
        if limit.warning > limit.alert:
            raise ThresholdError(w_env, f"the warning threshold ({limit.warning / spec[6]:g} "
                                 f"{env_unit}) is above the alert threshold {a_env} "
                                 f"({limit.alert / spec[6]:g} {env_unit})")
        limits[attribute] = limit
    return Thresholds(**limits)
