"""Airflow glue for the ``cleanup`` DAG: its params, the roles of this deployment, and the
connections each clean-up task reads.

The DAG file imports this module at parse time: it imports ``airflow.sdk`` (``Param``)
and the domain's settings table, nothing that connects anywhere.

Roles: ``MC_DEPLOYMENT_ROLES`` (comma-separated ``execution``, ``control``; default both,
the minimal architecture) says which task groups the DAG has; the Airflow metadata group
is always there.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from airflow.sdk import Param

from mc_airflow.defaults import ACCOUNT_REGISTRY, CONTROL_CONN_ID, EXECUTION_CONN_ID
from message_center.cleanup import BOUNDS, CleanupSettings

log = logging.getLogger(__name__)

ROLES_ENV = "MC_DEPLOYMENT_ROLES"
KNOWN_ROLES = ("execution", "control")

_DESCRIPTIONS = {
    "event_days": ("Event delay (days)",
                   "Execution instance: final events and their delivery logs whose last change "
                   "is older than this are deleted, once the control instance archived them "
                   "(ACC's NmsCleanup_EventPurgeDelay)."),
    "idempotency_key_hours": ("Idempotency-Key replay window (hours)",
                              "Execution instance: push API idempotency keys older than this "
                              "are deleted; the same key is then a new request."),
    "archived_event_days": ("Archive delay (days)",
                            "Control instance: archived events and delivery logs older than "
                            "this are deleted (NmsCleanup_EventHistoPurgeDelay)."),
    "statistics_days": ("Statistics delay (days)",
                        "Control instance: hourly event statistics older than this are "
                        "deleted (NmsCleanup_EventStatPurgeDelay); at least the archive delay."),
    "airflow_metadata_days": ("Airflow metadata kept (days)",
                              "DAG runs, task instances, XComs and audit log rows of the "
                              "Message Center's DAGs older than this are deleted with "
                              "Airflow's own `airflow db clean`."),
    "batch_rows": ("Rows per transaction",
                   "Each delete transaction removes at most this many rows (short locks)."),
}


def deployment_roles() -> tuple[str, ...]:
    """The database roles of this deployment, from ``MC_DEPLOYMENT_ROLES``; a bad value
    raises ``ValueError`` naming the variable (an import error in the UI, not silence)."""
    raw = os.environ.get(ROLES_ENV)
    if raw is None or not raw.strip():
        return KNOWN_ROLES
    roles = [part.strip().lower() for part in raw.split(",") if part.strip()]
    unknown = sorted(set(roles) - set(KNOWN_ROLES))
    if unknown:
        raise ValueError(f"{ROLES_ENV}={raw!r}: unknown role(s) {unknown}; use a "
                         f"comma-separated list of {', '.join(KNOWN_ROLES)}")
    return tuple(role for role in KNOWN_ROLES if role in roles)


def cleanup_params() -> dict[str, Param]:
    """One ``Param`` per delay (bounds from :data:`message_center.cleanup.BOUNDS`) and
    ``dry_run``."""
    params: dict[str, Param] = {}
    for name, (low, high, default) in BOUNDS.items():
        title, description = _DESCRIPTIONS[name]
        params[name] = Param(default, type="integer", minimum=low, maximum=high,
                             title=title, description=description)
    params["dry_run"] = Param(False, type="boolean", title="Dry run",
                              description="Report what would be deleted; change nothing.")
    return params


def cleanup_settings(params: Mapping[str, Any]) -> CleanupSettings:
    """Validated settings from a run's params (a bad value fails naming the param)."""
    return CleanupSettings.from_mapping(params)


def _optional_url(conn_id: str) -> tuple[str | None, str | None]:
    """(URL, None) or (None, why not) for a postgres connection that may be missing."""
    from airflow.sdk.exceptions import AirflowNotFoundException

    from mc_airflow.connections import database_url
    from message_center.db import with_connect_timeout

    try:
        return with_connect_timeout(database_url(conn_id), 10), None
    except AirflowNotFoundException:
        return None, f"no Airflow connection {conn_id!r}"
    except ValueError as exc:
        return None, str(exc)


def purge_execution_events(params: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """The execution instance's events and delivery logs (``mc_execution``), guarded by
    the control archive (``mc_control``) and the account registry; logs the report and
    returns it as a small dict (the task's XCom)."""
    from mc_airflow.connections import database_url
    from message_center.cleanup import purge_execution
    from message_center.db import engine_for
    from message_center.registry import load_registry, registry_path

    settings = cleanup_settings(params)
    registry = load_registry(registry_path(ACCOUNT_REGISTRY))
    for error in registry.errors:
        log.warning("account registry: %s", error)
    control_url, problem = _optional_url(CONTROL_CONN_ID)
    report = purge_execution(
        engine_for(database_url(EXECUTION_CONN_ID)),
        engine_for(control_url) if control_url else None, registry, settings, now=now,
        name=f"execution instance ({EXECUTION_CONN_ID})", control_problem=problem)
    _log_sizes(report.sizes_before, report.sizes_after)
    for line in report.lines():
        log.info("%s", line)
    return report.as_dict()


def purge_execution_idempotency_keys(params: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """Idempotency keys of ``mc_execution`` past their replay window."""
    from mc_airflow.connections import database_url
    from message_center.cleanup import purge_idempotency
    from message_center.db import engine_for

    settings = cleanup_settings(params)
    report = purge_idempotency(engine_for(database_url(EXECUTION_CONN_ID)), settings, now=now)
    _log_sizes(report.sizes_before, report.sizes_after)
    log.info("%sidempotency keys created before %s (replay window %s h): %s %s",
             "DRY RUN, nothing deleted: " if settings.dry_run else "",
             report.cutoff.isoformat(), settings.idempotency_key_hours, report.keys,
             "would go" if settings.dry_run else "deleted")
    return report.as_dict()


def _log_sizes(before: Mapping[str, Any], after: Mapping[str, Any]) -> None:
    for size in before.values():
        log.info("before: %s", size.summary())
    for size in after.values():
        log.info("after:  %s", size.summary())
