"""
### Bounce mail processing (ACC's bounce mails workflow)

Execution instance. Every 10 minutes, reads the **unseen** mails of the bounce mailbox
(Airflow connection `mc_bounce_mailbox`, type `imap`; without it the run is skipped) and
turns the asynchronous bounces of messages sent from here into outcomes:

- a permanent failure (RFC 3464 DSN or one of the non-standard formats `flufl.bounce`
  recognises) about one of our messages - found by its Message-ID
  `<mc.DELIVERY_LOG_ID@...>` quoted in the bounce - turns the *Sent* event and delivery
  log into **Delivery failed** with the bounce's reason;
- hard and soft bounces count for the **quarantine** by the same rules as the delivery
  (Variable `mc_quarantine_rules`); a *delayed* notification only counts as soft;
- every mail read is marked seen (deleted with the connection extra
  `"delete_processed": true`); mails that cannot be used are listed in the log with the
  reason (not a bounce, not about our messages, unknown message, recipient mismatch).

Reading a bounce twice changes nothing. Param `limit`: mails read per run.
"""

from __future__ import annotations

import logging
from typing import Any

import pendulum
from airflow.sdk import Param, dag, get_current_context, task

from mc_airflow.defaults import BOUNCE_MAILBOX_CONN_ID, DEFAULT_ARGS
from message_center import dag_ids

log = logging.getLogger(__name__)


@dag(
    dag_id=dag_ids.BOUNCE_MAILS,
    dag_display_name="Bounce mail processing",
    description="Read asynchronous bounces from the bounce mailbox (IMAP) into the delivery logs",
    schedule="*/10 * * * *",
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    doc_md=__doc__,
    tags=["message-center", "execution", "quarantine"],
    params={"limit": Param(1000, type="integer", minimum=1, maximum=100_000,
                           title="Mails per run",
                           description="Read at most this many unseen mails.")},
)
def bounce_mails() -> None:
    @task(task_display_name="Read the bounce mailbox")
    def read_bounce_mailbox() -> dict[str, Any]:
        """Parse, match and apply the unseen bounces (see the DAG docs)."""
        from airflow.sdk.exceptions import AirflowSkipException

        from mc_airflow.delivery import (
            bounce_mailbox_settings,
            execution_engine,
            quarantine_rules,
        )
        from message_center.delivery.bounce_mail import process_mailbox

        settings = bounce_mailbox_settings()
        if settings is None:
            raise AirflowSkipException(f"no Airflow connection {BOUNCE_MAILBOX_CONN_ID}: "
                                       "no bounce mailbox to read")
        limit = int(get_current_context()["params"]["limit"])
        report = process_mailbox(settings, execution_engine(), quarantine_rules(),
                                 limit=limit)
        log.info("bounce mailbox %s@%s/%s: %d read, %s", settings.login, settings.host,
                 settings.folder, report.read, report.outcomes)
        for line in report.unmatched:
            log.warning("not used: %s", line)
        return report.as_dict()

    read_bounce_mailbox()


bounce_mails()
