"""
### Quarantine synchronisation (ACC: the archiving workflow's quarantine step)

Control instance. Every 15 minutes, shares the quarantine between the **control instance**
and **every enabled execution account** of the registry `dags/execution_accounts.yaml`:

1. **up** — each instance's quarantine decisions changed since its last synchronisation
   (hard and soft bounces, addresses quarantined or released by hand) are copied to the
   control instance;
2. **down** — the control instance's decisions changed since the last synchronisation of
   each instance (those of the other instances, and those made on the control instance
   with `mc quarantine ... --instance control`) are copied to it.

The same run copies the **delivery-status webhook subscriptions** (managed on the control
instance) to every instance, and an endpoint an instance's dispatcher disabled (410, or
failing for 5 days) back up, with the reason.

Every copy keeps the time the decision was made: **the newest decision wins** on every
database, so a release made on the control instance after a bounce reaches every instance,
and re-running a run changes nothing. An address that bounced on instance 1 is ignored by
instance 2 after the next run. An unreachable instance fails the run (it is retried) after
the others were synchronised. Watermarks: `quarantine_sync` on `mc_control`.
"""

from __future__ import annotations

import logging
from typing import Any

import pendulum
from airflow.sdk import dag, task

from mc_airflow.defaults import ACCOUNT_REGISTRY, CONTROL_CONN_ID, DEFAULT_ARGS
from message_center import dag_ids
from message_center.registry import load_registry, registry_path

log = logging.getLogger(__name__)
REGISTRY = load_registry(registry_path(ACCOUNT_REGISTRY))
ACCOUNTS = [(account.name, account.conn_id, account.cell_id) for account in REGISTRY.enabled]


@dag(
    dag_id=dag_ids.QUARANTINE_SYNCH,
    dag_display_name="Quarantine synchronisation",
    description="Share quarantined addresses between the control and every execution instance",
    schedule="*/15 * * * *",
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    doc_md=__doc__,
    tags=["message-center", "control", "quarantine"],
)
def quarantine_synch() -> None:
    @task(task_display_name="Synchronise the quarantine")
    def synchronise() -> dict[str, Any]:
        """Up from every enabled account, then down to every one (see the DAG docs)."""
        from mc_airflow.connections import database_url
        from message_center.quarantine_sync import sync_all

        instances: dict[int, Any] = {}
        problems: list[str] = []
        for name, conn_id, cell in ACCOUNTS:
            try:
                instances[cell] = database_url(conn_id)
            except Exception as exc:  # a missing connection: report it with the others
                problems.append(f"account {name} (connection {conn_id}): {exc}")
        report = sync_all(instances, database_url(CONTROL_CONN_ID))
        names = {cell: name for name, _conn_id, cell in ACCOUNTS}
        for cell in instances:
            log.info("%s (cell %s): up %s; down %s", names[cell], cell,
                     report.up.get(cell, "not run"), report.down.get(cell, "not run"))
        problems += [f"account {names[cell]} (cell {cell}) {error}"
                     for cell, error in report.errors.items()]
        if problems:
            raise RuntimeError("quarantine not synchronised for: " + "; ".join(problems))
        return report.as_dict()

    @task(task_display_name="Synchronise the webhook subscriptions")
    def synchronise_webhooks() -> dict[str, Any]:
        """Delivery-status webhook subscriptions: each instance's endpoints disabled by its
        dispatcher up, then the control instance's subscriptions down to every instance
        (the newest decision wins; a delete is a tombstone that travels too)."""
        from mc_airflow.connections import database_url
        from message_center.webhooks.store import sync_all

        instances: dict[int, Any] = {}
        problems: list[str] = []
        for name, conn_id, cell in ACCOUNTS:
            try:
                instances[cell] = database_url(conn_id)
            except Exception as exc:
                problems.append(f"account {name} (connection {conn_id}): {exc}")
        report = sync_all(instances, database_url(CONTROL_CONN_ID))
        log.info("webhook subscriptions: %s", report)
        problems += [f"cell {cell} {error}" for cell, error in report["errors"].items()]
        if problems:
            raise RuntimeError("webhook subscriptions not synchronised for: "
                               + "; ".join(problems))
        return report

    synchronise()
    synchronise_webhooks()


quarantine_synch()
