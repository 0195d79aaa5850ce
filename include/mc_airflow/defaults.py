"""What every DAG file and the local tooling share: default args, connection ids, paths.

DAG files import this module at parse time and ``mc_local`` imports it too, so it
imports nothing but the standard library (checked by an import-linter contract in
``pyproject.toml``).
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

# Every DAG of the project: one owner, retries, so a transient failure heals by itself.
DEFAULT_ARGS: dict[str, Any] = {
    "owner": "message-center",
    "retries": 2,
    "retry_delay": timedelta(seconds=15),
}

#: This deployment's execution database (public name, see DESIGN.md).
EXECUTION_CONN_ID = "mc_execution"
#: The control database (templates, archive).
CONTROL_CONN_ID = "mc_control"
#: The SMTP relay (an Airflow ``smtp`` connection): the e-mail channel's, and proofs'.
#: Each channel names its own connection (``message_center.channel``).
SMTP_CONN_ID = "smtp_default"
#: The bounce mailbox (an Airflow ``imap`` connection) read by ``bounceMails``; optional.
BOUNCE_MAILBOX_CONN_ID = "mc_bounce_mailbox"

#: ``include/`` of the project (the Astro layout: ``dags/`` and ``include/`` side by side).
INCLUDE_DIR = Path(__file__).resolve().parents[1]
#: The DAG files' folder.
DAGS_DIR = INCLUDE_DIR.parent / "dags"
#: The repository's message templates; ``MC_TEMPLATES_DIR`` points elsewhere (tests, layouts).
TEMPLATES_DIR = INCLUDE_DIR / "message_templates"
TEMPLATES_DIR_ENV = "MC_TEMPLATES_DIR"
#: The execution-account registry next to the DAG files (``MC_ACCOUNT_REGISTRY`` overrides
#: it: :func:`message_center.registry.registry_path`).
ACCOUNT_REGISTRY = DAGS_DIR / "execution_accounts.yaml"


def templates_dir() -> Path:
    """The template folder to publish and check: ``$MC_TEMPLATES_DIR`` or the repository's."""
    return Path(os.environ.get(TEMPLATES_DIR_ENV) or TEMPLATES_DIR)


#: The roles of this deployment (DESIGN.md §1): ``execution`` (receives, processes and
#: delivers events), ``control`` (templates, archive of every execution account); both by
#: default (the minimal architecture). A second execution instance runs with
#: ``MC_DEPLOYMENT_ROLES=execution``: its Airflow gets the execution DAGs only.
ROLES_ENV = "MC_DEPLOYMENT_ROLES"
KNOWN_ROLES = ("execution", "control")


def deployment_roles() -> tuple[str, ...]:
    """``$MC_DEPLOYMENT_ROLES`` (comma-separated), default both; a bad value raises a
    ValueError naming the variable (a DAG import error in the UI, not silence)."""
    raw = os.environ.get(ROLES_ENV)
    if raw is None or not raw.strip():
        return KNOWN_ROLES
    roles = [part.strip().lower() for part in raw.split(",") if part.strip()]
    unknown = sorted(set(roles) - set(KNOWN_ROLES))
    if unknown:
        raise ValueError(f"{ROLES_ENV}={raw!r}: unknown role(s) {unknown}; use a "
                         f"comma-separated list of {', '.join(KNOWN_ROLES)}")
    return tuple(role for role in KNOWN_ROLES if role in roles)


def has_role(role: str) -> bool:
    """Whether this deployment plays ``role`` (DAG files ask it at parse time)."""
    return role in deployment_roles()
