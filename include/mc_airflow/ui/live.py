"""Live figures of the execution instances and the state of the Message Center DAGs.

Every instance is read in parallel, read-only, with a short connect and statement
timeout, so one unreachable instance shows as "unreachable" instead of holding the page.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from mc_airflow import dag_state
from mc_airflow.instances import (
    ExecutionInstance,
    account_registry,
    connection_url,
    execution_instances,
)
from message_center import dag_ids
from message_center.api.app import HealthThresholds
from message_center.db import engine_for
from message_center.registry import Registry, load_registry
from message_center.reporting import read_instance_live

STATEMENT_TIMEOUT_SECONDS = 5.0
EXECUTION_DAG_IDS = dag_ids.EXECUTION
"""The DAGs that work on an execution instance (shown for this deployment's own)."""
CLEANUP_DAG_ID = dag_ids.CLEANUP


def _live(instance: ExecutionInstance, thresholds: HealthThresholds) -> dict[str, Any]:
    url = connection_url(instance.conn_id)
    if url is None:
        return {"status": "error", "error": f"Airflow connection {instance.conn_id} is not "
                                            "defined"}
    try:
        return dict(read_instance_live(
            engine_for(url), timeout_seconds=STATEMENT_TIMEOUT_SECONDS,
            warning=thresholds.warning, alert=thresholds.alert).to_dict())
    except SQLAlchemyError as exc:
        original = getattr(exc, "orig", None) or exc
        first = (str(original).strip().splitlines() or [type(original).__name__])[0]
        return {"status": "error", "error": f"unreachable: {first}"}


def overview(registry: Registry | None = None) -> dict[str, Any]:
    """Every instance with its live figures and the DAGs that work on it."""
    registry = registry if registry is not None else load_registry(account_registry())
    instances = execution_instances(registry)
    thresholds = HealthThresholds.from_env()
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(instances)))) as pool:
        figures = list(pool.map(lambda i: _live(i, thresholds), instances))
    dag_ids = {*EXECUTION_DAG_IDS, CLEANUP_DAG_ID}
    dag_ids.update(i.account.dag_id for i in instances if i.account is not None)
    states = dag_state.dag_states(dag_ids)
    rows = []
    for instance, live in zip(instances, figures, strict=True):
        dags = []
        if instance.local:
            dags += [states[dag_id] for dag_id in EXECUTION_DAG_IDS]
        if instance.account is not None:
            dags.append(states[instance.account.dag_id])
        rows.append({"instance": instance, "live": live,
                     "dags": [state.to_dict() for state in dags]})
    return {"rows": rows, "registryErrors": registry.errors,
            "retention": retention(states[CLEANUP_DAG_ID]),
            "thresholds": {"warning": thresholds.warning, "alert": thresholds.alert,
                           "ageWarning": thresholds.age_warning,
                           "ageAlert": thresholds.age_alert},
            "checkedAt": datetime.now(UTC).isoformat(timespec="seconds").replace(
                "+00:00", "Z")}


def retention(state: dag_state.DagState) -> dict[str, Any]:
    """The clean-up's default delays (its scheduled runs use them) and its DAG's state."""
    from message_center.cleanup import CleanupSettings

    return {"dag": state.to_dict(), "delays": CleanupSettings().as_dict()}
