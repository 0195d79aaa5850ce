"""Airflow glue for bulk actions (``mcBulkAction``): params -> the domain's request, the
execution database from ``mc_execution``, the audit rows copied to ``mc_control`` when
this deployment has one (the archiving copies them otherwise)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy import text

from mc_airflow.connections import database_url, get_connection
from mc_airflow.defaults import CONTROL_CONN_ID, EXECUTION_CONN_ID
from message_center import audit
from message_center.db import engine_for
from message_center.operations import actions

log = logging.getLogger(__name__)
#: The DAG's ``user`` param when nobody gave one.
DEFAULT_USER = "airflow"


def run_bulk_action(params: Mapping[str, Any], run_id: str,
                    triggered_by: str | None = None) -> dict[str, Any]:
    """Validate the DAG params and run (or resume) the action whose id is ``run_id``.
    A run triggered by hand in Airflow without a ``user`` param is the triggering user's.

    Bad params and a refused guard raise ``AirflowFailException`` (a retry would not
    change the answer)."""
    from airflow.sdk.exceptions import AirflowFailException

    values = dict(params)
    if values.get("user") in (None, "", DEFAULT_USER) and triggered_by:
        values["user"] = triggered_by
    try:
        request = actions.parse_request(values)
        expected = actions.parse_count(params, "expectedCount", None)
        tolerance = actions.parse_count(params, "tolerance", 0) or 0
        batch = actions.parse_count(params, "batch_size", actions.DEFAULT_BATCH) \
            or actions.DEFAULT_BATCH
    except actions.OperationInputError as exc:
        raise AirflowFailException(f"{exc.field}: {exc}") from None
    engine = engine_for(database_url(EXECUTION_CONN_ID))
    try:
        result = actions.run_action(engine, run_id, request, expected_count=expected,
                                    tolerance=tolerance, batch_size=batch, run_id=run_id)
    except actions.GuardRefused as exc:
        copy_audit()
        raise AirflowFailException(str(exc)) from None
    except actions.OperationInputError as exc:
        raise AirflowFailException(str(exc)) from None
    copy_audit()
    log.info("%s %s: %d events of %d counted", request.action, run_id, result.done,
             result.counted)
    return result.to_dict()


def trigger_bulk_action(params: dict[str, Any], user_name: str) -> str:
    """Trigger an ``mcBulkAction`` run with these params, for ``user_name`` (in the API
    server, which holds Airflow's metadata session); returns its run id."""
    import uuid

    from airflow.api.common.trigger_dag import trigger_dag
    from airflow.utils.types import DagRunTriggeredByType

    from message_center import dag_ids

    run_id = f"bulk__{params['action']}__{uuid.uuid4().hex[:12]}"
    trigger_dag(dag_ids.BULK_ACTION, run_id=run_id, conf=params,
                triggered_by=DagRunTriggeredByType.REST_API,
                triggering_user_name=user_name, note=f"{params['action']} by {user_name}")
    return run_id


def copy_audit() -> int:
    """This execution instance's audit rows to the control instance, now, when this
    deployment has one (the minimal architecture); the archiving does it otherwise."""
    if get_connection(CONTROL_CONN_ID) is None:
        return 0
    source = engine_for(database_url(EXECUTION_CONN_ID))
    control = engine_for(database_url(CONTROL_CONN_ID))
    if source.url == control.url:
        return 0
    with source.connect() as src, control.begin() as dst:
        cell = int(src.execute(text("SELECT cell_id FROM mc_instance")).scalar_one())
        return audit.copy_to_control(src, dst, cell)


def audit_on_control(actor: str, action: str, target: str,
                     details: Mapping[str, Any] | None = None) -> None:
    """An audit row on the control instance for a change that is not a database change
    of its own (an execution account registered, enabled or disabled: the registry file
    and its DAG). A deployment without a control database has no audit trail to write."""
    if get_connection(CONTROL_CONN_ID) is None:
        return
    with engine_for(database_url(CONTROL_CONN_ID)).begin() as conn:
        audit.record(conn, actor=actor, action=action, target=target, details=details)
