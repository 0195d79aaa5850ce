"""The quarantine rules setting: the ``mc_quarantine_rules`` Airflow Variable (resolved from
``AIRFLOW_VAR_*`` as in tasks), defaults when unset, a clear error naming it when bad."""

from __future__ import annotations

import pytest

from mc_airflow.delivery import processing_settings, quarantine_rules
from message_center.delivery.quarantine import ChannelRules, QuarantineRules


def test_defaults_when_the_variable_is_not_set(monkeypatch):
    monkeypatch.delenv("AIRFLOW_VAR_MC_QUARANTINE_RULES", raising=False)
    assert quarantine_rules() == QuarantineRules()
    assert processing_settings({}).quarantine == QuarantineRules()


def test_the_variable_sets_rules_per_channel(monkeypatch):
    monkeypatch.setenv("AIRFLOW_VAR_MC_QUARANTINE_RULES",
                       '{"sms": {"soft_threshold": 5, "release_after_days": 0}}')
    rules = processing_settings({"shards": 2}).quarantine
    assert rules.sms == ChannelRules(soft_threshold=5, release_after_days=0)
    assert rules.email == ChannelRules()


def test_a_bad_variable_fails_naming_it(monkeypatch):
    monkeypatch.setenv("AIRFLOW_VAR_MC_QUARANTINE_RULES", '{"email": {"soft_treshold": 2}}')
    with pytest.raises(ValueError, match=r"Airflow Variable mc_quarantine_rules: email: "
                                         r"unknown key\(s\) \['soft_treshold'\]"):
        processing_settings({})
