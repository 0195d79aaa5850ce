"""Surfaces bad entries of the execution-account registry in Airflow.

`dags/mc_synch.py` generates one archiving DAG `mcSynch_<name>` per valid, enabled account
and skips a bad entry (duplicate name or cell id, bad name, unknown field, ...). So that a
skipped account is never silent, this file fails to import with the list of bad entries,
each naming the registry file and the entry: Airflow shows it under "DAG Import Errors",
while the DAGs of the good accounts keep running. It defines no DAG of its own.
"""

from __future__ import annotations

from mc_airflow.defaults import ACCOUNT_REGISTRY, has_role
from message_center.registry import load_registry, registry_path

if has_role("control"):  # MC_DEPLOYMENT_ROLES: the registry is the control instance's
    load_registry(registry_path(ACCOUNT_REGISTRY)).raise_for_errors()
