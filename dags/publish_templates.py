"""
### Publish message templates

Control instance. Publishes the message templates of the repository
(`include/message_templates/*.yaml`, reviewed in pull requests) to every execution
instance: each registered execution account and this deployment's own `mc_execution`.

1. **plan** — loads and validates every template file (a file with a problem fails the
   run and publishes nothing), stores a new version on the control database (`mc_control`)
   for each template whose content changed, and marks what is published.
   A **scheduled** run publishes only changed templates, and stops here when nothing
   changed and every instance is already in line. A **manual** run publishes every template
   (or those named in `templates`).
2. **publish_to_instance** — one task per execution instance: in one transaction, makes its
   active templates exactly the current versions of the published ones (publishes what
   differs, deactivates what was unpublished). A down instance fails only its own task.
3. **report** — sums up per instance and fails the run when an instance was not reached
   (it catches up on the next run).

Params (manual runs):
- `templates`: internal names to publish (default: all).
- `unpublish`: internal names to unpublish from every instance; with it, only the
  templates named in `templates` are published.
- `instances`: connection ids to publish to (default: every registered account and
  `mc_execution`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from mc_airflow.connections import database_url
from mc_airflow.defaults import CONTROL_CONN_ID, DEFAULT_ARGS, has_role
from message_center import dag_ids


@dag(
    dag_id=dag_ids.PUBLISH_TEMPLATES,
    dag_display_name="Publish message templates",
    description="Version the repository's message templates and publish them to every "
                "execution instance",
    schedule="*/5 * * * *",
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    doc_md=__doc__,
    tags=["message-center", "control", "templates"],
    params={
        "templates": Param([], type="array", items={"type": "string"},
                           title="Templates to publish",
                           description="Internal names; empty: every template."),
        "unpublish": Param([], type="array", items={"type": "string"},
                           title="Templates to unpublish",
                           description="Internal names removed from every execution instance."),
        "instances": Param([], type="array", items={"type": "string"},
                           title="Execution instances",
                           description="Connection ids; empty: every registered account and "
                                       "mc_execution."),
    },
)
def publish_templates() -> None:
    @task
    def plan(params: dict[str, Any] | None = None) -> list[dict[str, str]]:
        """Validate the files, version changed templates on the control database and
        choose the instances to publish to."""
        from mc_airflow.defaults import templates_dir
        from mc_airflow.publishing import publish_targets, targets_behind
        from message_center import templates as tpl
        from message_center.db import engine_for

        context = get_current_context()
        params = params or {}
        run_type = context["dag_run"].run_type
        scheduled = getattr(run_type, "value", run_type) == "scheduled"
        template_set = tpl.load_templates(templates_dir())
        if not template_set.ok:
            raise AirflowFailException(str(tpl.TemplateValidationError(template_set.problems)))
        control = engine_for(database_url(CONTROL_CONN_ID))
        try:
            run = context["dag_run"]
            with control.begin() as conn:  # a manual run: the audit trail says who published
                publication = tpl.plan_publication(
                    conn, template_set, names=params.get("templates") or None,
                    unpublish_names=params.get("unpublish") or (), only_changed=scheduled,
                    audited_by=None if scheduled
                    else getattr(run, "triggering_user_name", None) or "airflow",
                    audit_details={"instances": params.get("instances") or [],
                                   "runId": run.run_id})
        except ValueError as exc:
            raise AirflowFailException(str(exc)) from None
        print(f"control database: {publication.summary()}")
        targets, warnings = publish_targets(params.get("instances") or None)
        for warning in warnings:
            print(f"WARNING: {warning}")
        if scheduled and not publication.changed:
            with control.connect() as conn:
                desired = tpl.desired_state(conn)
            targets, notes = targets_behind(desired, targets, database_url)
            for note in notes:
                print(note)
            if not targets:
                print("nothing changed and every instance is up to date: nothing to publish")
        print(f"publishing to: {', '.join(t.conn_id for t in targets) or 'none'}")
        return [target.as_dict() for target in targets]

    @task(map_index_template="{{ instance_name }}", retries=1,
          retry_delay=timedelta(seconds=10))
    def publish_to_instance(target: dict[str, str]) -> dict[str, Any]:
        """Make one execution instance's active templates the published versions, in one
        transaction (an instance that is down fails only this task)."""
        from message_center.db import engine_for, first_line, with_connect_timeout
        from message_center.publishing import sync_instance
        from message_center.templates import desired_state

        context = get_current_context()
        context["instance_name"] = target["conn_id"]  # type: ignore[typeddict-unknown-key]
        with engine_for(database_url(CONTROL_CONN_ID)).connect() as conn:
            desired = desired_state(conn)
        try:
            url = with_connect_timeout(database_url(target["conn_id"]))
            with engine_for(url).begin() as conn:
                result = sync_instance(conn, desired)
        except Exception as exc:
            context["ti"].xcom_push(key="error", value=first_line(exc))
            raise
        print(f"{target['conn_id']}: {result.summary()}")
        return {"conn_id": target["conn_id"], **result.as_dict()}

    @task(trigger_rule="all_done")
    def report(targets: list[dict[str, str]] | None) -> dict[str, Any]:
        """Per instance: what was published, or why it was not reached."""
        if targets is None:  # this task runs whatever happened upstream: keep the run red
            raise AirflowFailException("plan failed (see its log): nothing was published")
        ti = get_current_context()["ti"]
        done, failed = [], []
        for index, target in enumerate(targets):
            result = ti.xcom_pull(task_ids="publish_to_instance", map_indexes=index)
            if result:
                done.append(result)
                print(f"{target['conn_id']}: published {result['published'] or 'nothing new'}, "
                      f"removed {result['removed'] or 'nothing'}, unchanged "
                      f"{result['unchanged']}")
            else:
                error = ti.xcom_pull(task_ids="publish_to_instance", key="error",
                                     map_indexes=index) or "see the task's log"
                failed.append({"conn_id": target["conn_id"], "error": error})
                print(f"{target['conn_id']}: NOT PUBLISHED: {error}")
        if failed:
            raise AirflowFailException(
                f"{len(failed)} execution instance(s) not published "
                f"({', '.join(f['conn_id'] for f in failed)}); the others are. "
                "The next run catches them up.")
        return {"published": [r["conn_id"] for r in done], "failed": failed}

    targets = plan()
    report(targets) << publish_to_instance.expand(target=targets)


if has_role("control"):  # MC_DEPLOYMENT_ROLES
    publish_templates()
