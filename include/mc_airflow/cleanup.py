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
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Param

from mc_airflow.defaults import ACCOUNT_REGISTRY, CONTROL_CONN_ID, EXECUTION_CONN_ID
from message_center import dag_ids
from message_center.cleanup import BOUNDS, CleanupSettings

log = logging.getLogger(__name__)

_DESCRIPTIONS = {
    "event_days": ("Event delay (days)",
                   "Execution instance: final events and their delivery logs whose last change "
                   "is older than this are deleted, once the control instance archived them "
                   "(ACC's NmsCleanup_EventPurgeDelay)."),
    "idempotency_key_hours": ("Idempotency-Key replay window (hours)",
                              "Execution instance: push API idempotency keys older than this "
                              "are deleted; the same key is then a new request."),
    "webhook_days": ("Webhook messages kept (days)",
                     "Execution instance: webhook messages delivered or failed (replayable "
                     "until then) and their attempts older than this are deleted."),
    "archived_event_days": ("Archive delay (days)",
                            "Control instance: archived events and delivery logs older than "
                            "this are deleted (NmsCleanup_EventHistoPurgeDelay)."),
    "statistics_days": ("Statistics delay (days)",
                        "Control instance: hourly event statistics older than this are "
                        "deleted (NmsCleanup_EventStatPurgeDelay); at least the archive delay."),
    "audit_days": ("Audit trail kept (days)",
                   "Both instances: audit rows (bulk actions, quarantine, suppression, "
                   "account, publish and webhook changes) older than this are deleted."),
    "airflow_metadata_days": ("Airflow metadata kept (days)",
                              "DAG runs, task instances, XComs and audit log rows of the "
                              "Message Center's DAGs older than this are deleted with "
                              "Airflow's own `airflow db clean`."),
    "batch_rows": ("Rows per transaction",
                   "Each delete transaction removes at most this many rows (short locks)."),
}


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
    from message_center.cleanup import purge_audit

    execution = engine_for(database_url(EXECUTION_CONN_ID))
    report = purge_idempotency(execution, settings, now=now)
    log.info("audit rows older than %s days: %s", settings.audit_days,
             purge_audit(execution, settings, now=now))
    _log_sizes(report.sizes_before, report.sizes_after)
    log.info("%sidempotency keys created before %s (replay window %s h): %s %s",
             "DRY RUN, nothing deleted: " if settings.dry_run else "",
             report.cutoff.isoformat(), settings.idempotency_key_hours, report.keys,
             "would go" if settings.dry_run else "deleted")
    log.info("webhook messages, attempts and deleted subscriptions done before %s days "
             "ago: %s", settings.webhook_days, report.webhooks)
    return report.as_dict()


def _log_sizes(before: Mapping[str, Any], after: Mapping[str, Any]) -> None:
    for size in before.values():
        log.info("before: %s", size.summary())
    for size in after.values():
        log.info("after:  %s", size.summary())


def purge_control_archive(params: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """Archived events and delivery logs of ``mc_control`` past the archive delay."""
    from mc_airflow.connections import database_url
    from message_center.cleanup import purge_archive
    from message_center.db import engine_for

    report = purge_archive(engine_for(database_url(CONTROL_CONN_ID)), cleanup_settings(params),
                           now=now)
    _log_sizes(report.sizes_before, report.sizes_after)
    for line in report.lines():
        log.info("%s", line)
    return report.as_dict()


def purge_control_statistics(params: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """Hourly event statistics of ``mc_control`` past the statistics delay."""
    from mc_airflow.connections import database_url
    from message_center.cleanup import purge_audit, purge_statistics_before
    from message_center.db import engine_for

    settings = cleanup_settings(params)
    control = engine_for(database_url(CONTROL_CONN_ID))
    report = purge_statistics_before(control, settings, now=now)
    _log_sizes(report.sizes_before, report.sizes_after)
    for line in report.lines():
        log.info("%s", line)
    audited = purge_audit(control, settings, now=now)
    log.info("%saudit rows older than %s days: %s %s",
             "DRY RUN, nothing deleted: " if settings.dry_run else "", settings.audit_days,
             audited, "would go" if settings.dry_run else "deleted")
    return {**report.as_dict(), "audit_rows": audited}


# --- Airflow metadata --------------------------------------------------------------------
#: Airflow's conventional connection id for its own metadata database.
AIRFLOW_DB_CONN_ID = "airflow_db"
#: What `airflow db clean` may delete here: a Message Center DAG's runs and what hangs off
#: them (Airflow adds the dependent tables itself: task_state_store, deadline of those
#: runs). Never `dag`, `dag_version`, `job`, `trigger`, `callback`, `import_error`,
#: `asset_event`, `session`, `revoked_token`: they are the scheduler's and the whole
#: deployment's, not the Message Center's.
AIRFLOW_TABLES = ("dag_run", "task_instance", "task_instance_history", "task_reschedule",
                  "xcom", "log")
#: The Message Center's DAGs that are not tagged (the tag `message-center` finds the rest).
MESSAGE_CENTER_DAG_IDS = (*dag_ids.EXECUTION, dag_ids.PUBLISH_TEMPLATES, dag_ids.CLEANUP)
MESSAGE_CENTER_TAG = "message-center"


def message_center_dag_ids(metadata_url: str) -> list[str]:
    """Every DAG id tagged ``message-center`` in the metadata DB (a read), the fixed ids and
    the archiving DAGs of the registry (also disabled accounts': their old runs)."""
    from sqlalchemy import text

    from message_center.db import engine_for
    from message_center.registry import load_registry, registry_path

    with engine_for(metadata_url).connect() as conn:
        tagged = set(conn.execute(text("SELECT dag_id FROM dag_tag WHERE name = :tag"),
                                  {"tag": MESSAGE_CENTER_TAG}).scalars())
    registry = load_registry(registry_path(ACCOUNT_REGISTRY))
    return sorted(tagged | set(MESSAGE_CENTER_DAG_IDS) | {a.dag_id for a in registry.accounts})


def clean_airflow_metadata(params: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """`airflow db clean` (Airflow's own tool, as a subprocess) for the Message Center's
    DAGs, keeping ``airflow_metadata_days``; sizes of the tables before and after.

    Airflow 3 blocks the metadata database inside tasks; the subprocess gets it from the
    ``airflow_db`` connection. Without that connection nothing is deleted and the log
    says how to run the same command outside Airflow."""
    import subprocess
    import sys

    from message_center.cleanup import table_sizes
    from message_center.db import engine_for, sqlalchemy_url

    settings = cleanup_settings(params)
    before = now - timedelta(days=settings.airflow_metadata_days)
    url, problem = _optional_url(AIRFLOW_DB_CONN_ID)
    command = ["airflow", "db", "clean", "--clean-before-timestamp", before.isoformat(),
               "--tables", ",".join(AIRFLOW_TABLES), "--skip-archive", "--yes",
               "--batch-size", str(settings.batch_rows)]
    if settings.dry_run:
        command.append("--dry-run")
    if url is None:
        log.warning("Airflow metadata not cleaned: %s (a postgres connection to Airflow's "
                    "metadata database). Tasks cannot reach it otherwise in Airflow 3; "
                    "define it, or run `%s --dag-ids <ids>` where Airflow is configured.",
                    problem, " ".join(command))
        return {"skipped": problem}
    engine = engine_for(url)
    dag_ids = message_center_dag_ids(url)
    command += ["--dag-ids", ",".join(dag_ids)]
    sizes_before = table_sizes(engine, AIRFLOW_TABLES)
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
                                  "AIRFLOW__CORE__SQL_ALCHEMY_CONN"))}
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = sqlalchemy_url(url)
    log.info("%sAirflow metadata older than %s of %d DAG(s): %s",
             "DRY RUN, nothing deleted: " if settings.dry_run else "", before.isoformat(),
             len(dag_ids), ", ".join(dag_ids))
    log.info("$ %s", " ".join([*command[:-1], "<the DAG ids above>"]))
    result = subprocess.run([sys.executable, "-m", *command], env=env, capture_output=True,
                            text=True, timeout=3600)
    for line in (result.stdout + result.stderr).splitlines():
        if line.strip():
            log.info("airflow db clean: %s", line)
    if result.returncode != 0:
        raise RuntimeError(f"airflow db clean failed with exit code {result.returncode}")
    sizes_after = table_sizes(engine, AIRFLOW_TABLES)
    _log_sizes(sizes_before, sizes_after)
    return {"dry_run": settings.dry_run, "before": before.isoformat(), "dag_ids": len(dag_ids),
            "bytes_before": {t: s.total_bytes for t, s in sizes_before.items()},
            "bytes_after": {t: s.total_bytes for t, s in sizes_after.items()}}
