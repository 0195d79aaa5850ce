"""Publishing topology: which execution instances the mcPublishTemplates DAG publishes to.

The domain (:mod:`message_center.templates`, :mod:`message_center.publishing`) publishes
to a database it is given; which databases those are is this deployment's business:
every enabled account of the execution-account registry, plus its own ``mc_execution``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mc_airflow.defaults import ACCOUNT_REGISTRY, EXECUTION_CONN_ID
from message_center.db import engine_for, first_line, with_connect_timeout
from message_center.publishing import TemplateContent, in_sync
from message_center.registry import load_registry, registry_path


@dataclass(frozen=True)
class PublishTarget:
    """An execution database templates are published to, by Airflow connection id."""

    conn_id: str
    label: str

    def as_dict(self) -> dict[str, str]:
        return {"conn_id": self.conn_id, "label": self.label}


def publish_targets(conn_ids: Sequence[str] | None = None,
                    registry_file: Path | None = None) -> tuple[list[PublishTarget], list[str]]:
    """Every enabled account of the registry (default: ``dags/execution_accounts.yaml`` or
    ``$MC_ACCOUNT_REGISTRY``) plus this deployment's own execution database, deduplicated
    by connection id (or exactly ``conn_ids``). Returns the targets and warnings (registry
    problems, disabled accounts)."""
    if conn_ids:
        return [PublishTarget(conn_id, conn_id) for conn_id in dict.fromkeys(conn_ids)], []
    targets = {EXECUTION_CONN_ID: PublishTarget(EXECUTION_CONN_ID,
                                                    "this deployment's execution instance")}
    registry = load_registry(registry_file or registry_path(ACCOUNT_REGISTRY))
    warnings = [f"account registry: {error}" for error in registry.errors]
    for account in registry.accounts:
        if not account.enabled:
            warnings.append(f"account {account.name} is disabled: not published to")
            continue
        if account.conn_id == EXECUTION_CONN_ID:
            targets[account.conn_id] = PublishTarget(account.conn_id, account.label)
        targets.setdefault(account.conn_id, PublishTarget(account.conn_id, account.label))
    return sorted(targets.values(), key=lambda t: t.conn_id), warnings


def targets_behind(desired: Sequence[TemplateContent], targets: Sequence[PublishTarget],
                   url_of: Callable[[str], str]) -> tuple[list[PublishTarget], list[str]]:
    """The targets whose active templates differ from ``desired``, plus notes; a target
    that cannot be reached counts as behind (its publish task reports why)."""
    behind, notes = [], []
    for target in targets:
        try:
            with engine_for(with_connect_timeout(url_of(target.conn_id), 5)).connect() as conn:
                if in_sync(conn, desired):
                    continue
                notes.append(f"{target.conn_id}: behind the control database")
        except Exception as exc:  # an unknown connection, a down server: publish reports it
            notes.append(f"{target.conn_id}: not checked: {first_line(exc)}")
        behind.append(target)
    return behind, notes
