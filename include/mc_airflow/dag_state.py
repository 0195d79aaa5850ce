"""The state of Message Center DAGs, read from Airflow's metadata DB in the API server.

The pages run inside the API server process, which holds Airflow's ORM session: reading
``dag`` / ``dag_run`` there costs two indexed queries per page, with no HTTP round trip
and no token. Tasks cannot do this (they have no metadata DB access); only the plugin
calls it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class DagRunState:
    run_id: str
    state: str
    run_type: str
    run_after: datetime | None
    start_date: datetime | None
    end_date: datetime | None
    data_interval_end: datetime | None


@dataclass(frozen=True)
class DagState:
    """One DAG as the scheduler sees it (``exists`` is False before its first parse)."""

    dag_id: str
    exists: bool
    display_name: str | None = None
    paused: bool | None = None
    stale: bool | None = None
    import_errors: bool | None = None
    appeared: datetime | None = None
    last_run: DagRunState | None = None
    last_success: DagRunState | None = None

    @property
    def active(self) -> bool:
        """Parsed, not stale: the scheduler knows it (it runs unless paused)."""
        return self.exists and not self.stale

    @property
    def last_run_failed(self) -> bool:
        return self.last_run is not None and self.last_run.state == "failed"

    def to_dict(self) -> dict[str, Any]:
        def run(value: DagRunState | None) -> dict[str, Any] | None:
            if value is None:
                return None
            return {"runId": value.run_id, "state": value.state, "runType": value.run_type,
                    "runAfter": _iso(value.run_after), "startDate": _iso(value.start_date),
                    "endDate": _iso(value.end_date),
                    "dataIntervalEnd": _iso(value.data_interval_end)}

        return {"dagId": self.dag_id, "exists": self.exists, "active": self.active,
                "displayName": self.display_name, "paused": self.paused, "stale": self.stale,
                "importErrors": self.import_errors, "appeared": _iso(self.appeared),
                "lastRun": run(self.last_run), "lastSuccess": run(self.last_success),
                "lastRunFailed": self.last_run_failed}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def _run(row: Any) -> DagRunState:
    run_type = getattr(row.run_type, "value", row.run_type)
    state = getattr(row.state, "value", row.state)
    return DagRunState(run_id=row.run_id, state=str(state), run_type=str(run_type),
                       run_after=row.run_after, start_date=row.start_date,
                       end_date=row.end_date, data_interval_end=row.data_interval_end)


def dag_states(dag_ids: Iterable[str]) -> dict[str, DagState]:
    """State of each DAG id, with its newest run and its newest successful run."""
    from airflow.models.dag import DagModel
    from airflow.models.dag_version import DagVersion
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    ids = sorted(set(dag_ids))
    if not ids:
        return {}
    states: dict[str, DagState] = {}
    with create_session() as session:
        models = {m.dag_id: m for m in session.scalars(
            select(DagModel).where(DagModel.dag_id.in_(ids)))}
        appeared = dict(session.execute(
            select(DagVersion.dag_id, func.min(DagVersion.created_at))
            .where(DagVersion.dag_id.in_(ids)).group_by(DagVersion.dag_id)).all())
        for dag_id in ids:
            model = models.get(dag_id)
            if model is None:
                states[dag_id] = DagState(dag_id=dag_id, exists=False)
                continue
            runs = select(DagRun).where(DagRun.dag_id == dag_id).order_by(
                DagRun.run_after.desc(), DagRun.id.desc()).limit(1)
            last = session.scalars(runs).first()
            success = session.scalars(
                select(DagRun).where(DagRun.dag_id == dag_id, DagRun.state == "success")
                .order_by(DagRun.data_interval_end.desc().nulls_last(), DagRun.id.desc())
                .limit(1)).first()
            states[dag_id] = DagState(
                dag_id=dag_id, exists=True, display_name=model.dag_display_name,
                paused=bool(model.is_paused), stale=bool(model.is_stale),
                import_errors=bool(model.has_import_errors), appeared=appeared.get(dag_id),
                last_run=_run(last) if last is not None else None,
                last_success=_run(success) if success is not None else None)
    return states
