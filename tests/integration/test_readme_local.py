"""The walk-through's blocks that need no running Airflow (test_readme.py's
``WITHOUT_AIRFLOW``: templates, accounts) work as written, run by bash like the others
(test_readme.py says how) against the test deployment's databases and SMTP sink. A module
of its own, so that any pytest worker may run it: the Airflow stack's chain of tests is the
suite's longest."""

from __future__ import annotations

import shutil

import pytest
from test_readme import make_walk

from message_center.registry import load_registry


@pytest.fixture
def registry(tmp_path):
    """A copy of the execution account registry, for the accounts block to change."""
    from mc_airflow.defaults import ACCOUNT_REGISTRY

    path = tmp_path / ACCOUNT_REGISTRY.name
    shutil.copyfile(ACCOUNT_REGISTRY, path)
    return path


def test_the_readme_template_and_account_commands_work_verbatim(
        test_deployment, execution_db, control_db, smtp_sink, sms_sink, registry, tmp_path):
    walk = make_walk(test_deployment, smtp_sink, sms_sink, tmp_path, registry)

    # Templates: each command succeeds (proofs reach the SMTP sink).
    walk.run("templates")
    assert sum("[Proof" in str(m["Subject"]) for m in smtp_sink.messages()) == 3

    # Accounts: listed, tested, added, disabled, enabled, removed again.
    before = [account.name for account in load_registry(registry).accounts]
    accounts = walk.run("accounts")
    assert "cell id 1 matches" in accounts.stdout
    assert "mcExec3" in accounts.stdout  # added, then removed again:
    assert [account.name for account in load_registry(registry).accounts] == before
