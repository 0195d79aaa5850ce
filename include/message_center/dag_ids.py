"""The DAG ids of the Message Center: the one place they are written.

They are ACC's internal workflow names and public names (DESIGN.md §2, §7: tests and
scripts outside the project trigger and read these DAGs), so they never change. DAG files
take their ``dag_id`` from here, and so do the permissions (``mc_airflow.authorization``),
the UI, the clean-up of Airflow's metadata and the test fixtures. It lives in the domain
because the account registry names the archiving DAGs (``mcSynch_<name>``), and it imports
nothing: DAG files import it at parse time.
"""

from __future__ import annotations

#: Execution instance: the real-time and batch queues' processing, the status copy.
RT_EVENTS_PROCESSING = "rtEventsProcessing"
BATCH_EVENTS_PROCESSING = "batchEventsProcessing"
UPDATE_EVENT_STATUS = "updateEventStatus"
#: The processing DAG of each queue (event kind ``rt`` / ``batch``).
PROCESSING: dict[str, str] = {"rt": RT_EVENTS_PROCESSING, "batch": BATCH_EVENTS_PROCESSING}
#: The delivery-status webhooks' dispatcher (continuous).
WEBHOOKS = "mcWebhooks"
#: Bulk actions by filter (cancel, retry, replay), triggered by hand (API, UI, CLI).
BULK_ACTION = "mcBulkAction"
#: The DAGs that work on an execution instance.
EXECUTION: tuple[str, ...] = (RT_EVENTS_PROCESSING, BATCH_EVENTS_PROCESSING,
                              UPDATE_EVENT_STATUS, WEBHOOKS, BULK_ACTION)

#: Control instance: template publishing, the quarantine exchange between instances.
PUBLISH_TEMPLATES = "mcPublishTemplates"
QUARANTINE_SYNCH = "mcQuarantineSynch"
#: Every role: the database clean-up (ACC's "Database cleanup"), the bounce mailbox.
CLEANUP = "cleanup"
BOUNCE_MAILS = "bounceMails"

#: One archiving DAG per execution account of the registry: ``mcSynch_<name>``.
ARCHIVING_PREFIX = "mcSynch_"


def archiving(account_name: str) -> str:
    """The archiving DAG id of the execution account called ``account_name``."""
    return f"{ARCHIVING_PREFIX}{account_name}"
