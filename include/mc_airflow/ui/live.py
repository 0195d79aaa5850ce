"""Live figures of the execution instances and the state of the Message Center DAGs.

Every instance is read in parallel, read-only, with a short connect and statement
timeout, so one unreachable instance shows as "unreachable" instead of holding the page.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from mc_airflow import authz, dag_state
from mc_airflow.instances import ExecutionInstance, connection_url, execution_instances
from message_center.api.app import HealthThresholds
from message_center.db import engine_for
from message_center.registry import Registry, load_registry

STATEMENT_TIMEOUT = "5s"

try:  # the reporting package (issue 11, data half)
    from message_center.reporting import instance_live
except ImportError:  # pragma: no cover - until it lands: the same figures, same shape
    from message_center import events

    class _Live:
        def __init__(self, data: dict[str, Any]) -> None:
            self.data = data

        def to_dict(self) -> dict[str, Any]:
            return self.data

    def instance_live(conn: Any, *, thresholds: HealthThresholds | None = None,
                      now: datetime | None = None) -> Any:
        limits = thresholds or HealthThresholds.from_env()
        stamp = (now or datetime.now(UTC)).isoformat(timespec="milliseconds").replace(
            "+00:00", "Z")
        depths = events.queue_depths(conn)
        sent = conn.execute(text(
            "SELECT count(*) FROM delivery_log WHERE last_modified >= now() - interval '1 hour'"
            " AND status = 'sent' AND sent_at >= now() - interval '1 hour'")).scalar_one()
        cell = conn.execute(text("SELECT cell_id FROM mc_instance")).scalar()
        pending = depths["rt"].pending
        status = ("alert" if pending >= limits.alert
                  else "warning" if pending >= limits.warning else "ok")
        word = {"ok": "Ok", "warning": "Warning", "alert": "Error"}[status]
        return _Live({
            "cellId": cell, "checkedAt": stamp, "rtPending": pending,
            "batchPending": depths["batch"].pending,
            "oldestRtPendingAgeSeconds": depths["rt"].oldest_pending_age,
            "oldestBatchPendingAgeSeconds": depths["batch"].oldest_pending_age,
            "sentLastHour": int(sent), "status": status,
            "message": f"{word} / {stamp} / {pending}/{limits.alert} pending events",
            "warningThreshold": limits.warning, "alertThreshold": limits.alert})


def _live(instance: ExecutionInstance, thresholds: HealthThresholds) -> dict[str, Any]:
    url = connection_url(instance.conn_id)
    if url is None:
        return {"status": "error", "error": f"Airflow connection {instance.conn_id} is not "
                                            "defined"}
    try:
        with engine_for(url).connect() as conn:
            conn.execute(text("SET TRANSACTION READ ONLY"))
            conn.execute(text(f"SET LOCAL statement_timeout = '{STATEMENT_TIMEOUT}'"))
            return dict(instance_live(conn, thresholds=thresholds).to_dict())
    except SQLAlchemyError as exc:
        original = getattr(exc, "orig", None) or exc
        first = (str(original).strip().splitlines() or [type(original).__name__])[0]
        return {"status": "error", "error": f"unreachable: {first}"}


def overview(registry: Registry | None = None) -> dict[str, Any]:
    """Every instance with its live figures and the DAGs that work on it."""
    registry = registry if registry is not None else load_registry()
    instances = execution_instances(registry)
    thresholds = HealthThresholds.from_env()
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(instances)))) as pool:
        figures = list(pool.map(lambda i: _live(i, thresholds), instances))
    dag_ids = set(authz.EXECUTION_DAG_IDS)
    dag_ids.update(i.account.dag_id for i in instances if i.account is not None)
    states = dag_state.dag_states(dag_ids)
    rows = []
    for instance, live in zip(instances, figures, strict=True):
        dags = []
        if instance.local:
            dags += [states[dag_id] for dag_id in authz.EXECUTION_DAG_IDS]
        if instance.account is not None:
            dags.append(states[instance.account.dag_id])
        rows.append({"instance": instance, "live": live,
                     "dags": [state.to_dict() for state in dags]})
    return {"rows": rows, "registryErrors": registry.errors,
            "thresholds": {"warning": thresholds.warning, "alert": thresholds.alert},
            "checkedAt": datetime.now(UTC).isoformat(timespec="seconds").replace(
                "+00:00", "Z")}
