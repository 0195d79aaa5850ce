"""Message templates as reviewed files: load, validate, preview, proof, version, publish.

Templates live in the repository (``include/message_templates/*.yaml``, one file per
event type and channel) so every change goes through a pull request. The package never
imports Airflow and never decides where the files are: the publishing DAG, ``mc setup``
and the ``mc templates`` command pass the folder and the database URLs.

* :mod:`.model` - :class:`MessageTemplate`, :class:`TemplateSet`, problems;
* :mod:`.source` - YAML that remembers the line of every value;
* :mod:`.validation` - checks with ``file:line: field: reason``, seed renders;
* :mod:`.preview` - previews (files) and proofs (e-mails), rendered like the delivery;
* :mod:`.versions` - versions on the control database and a whole publication by URLs.

The execution side of publishing (what an execution database has active) is
:mod:`message_center.publishing`; which instances to publish to is deployment topology
(:mod:`mc_airflow.publishing` for the DAG, :mod:`mc_local.launcher` for ``mc setup``).
"""

from __future__ import annotations

from message_center.delivery.sms import sms_segments  # the SMS preview's length rule
from message_center.templates.model import (
    MessageTemplate,
    Seed,
    TemplateProblem,
    TemplateSet,
    TemplateValidationError,
    content_hash,
    display_path,
)
from message_center.templates.preview import (
    ProofResult,
    pick_seed,
    proof_message,
    send_proofs,
    write_preview,
)
from message_center.templates.validation import (
    RenderedSeed,
    load_template,
    load_templates,
    render_seed,
    seed_event,
)
from message_center.templates.versions import (
    PublicationPlan,
    PublishReport,
    desired_state,
    mark_published,
    mark_unpublished,
    plan_publication,
    publish_repository,
    published_content,
    store_version,
)

__all__ = [
    "MessageTemplate",
    "ProofResult",
    "PublicationPlan",
    "PublishReport",
    "RenderedSeed",
    "Seed",
    "TemplateProblem",
    "TemplateSet",
    "TemplateValidationError",
    "content_hash",
    "desired_state",
    "display_path",
    "load_template",
    "load_templates",
    "mark_published",
    "mark_unpublished",
    "pick_seed",
    "plan_publication",
    "proof_message",
    "publish_repository",
    "published_content",
    "render_seed",
    "seed_event",
    "send_proofs",
    "sms_segments",
    "store_version",
    "write_preview",
]
