"""Where sandbox mode is read from: the environment wins over the Airflow Variables, a bad
value is named as the setting the operator wrote, the push API's user list, the banner's
flag."""

from __future__ import annotations

import pytest

from mc_airflow import sandbox as adapter

pytestmark = pytest.mark.fast


def test_users_named_in_mc_sandbox_users_are_sandboxed():
    sandboxed = adapter.user_sandboxer({"MC_SANDBOX_USERS": "qa-bot"})
    assert sandboxed("qa-bot") and not sandboxed("shop") and not sandboxed(None)
    assert adapter.user_sandboxer({}) is None  # nobody: the push path asks nothing


def test_the_environment_wins_over_the_variables():
    variables = {"mc_sandbox": "true", "mc_sandbox_rules": '{"hard": ["*@v.test"]}'}
    from_variables = adapter.settings({}, variables.get)
    assert from_variables.instance and from_variables.rule_for("a@v.test") == "hard"
    from_env = adapter.settings({"MC_SANDBOX": "0", "MC_SANDBOX_RULES": "{}"}, variables.get)
    assert not from_env.instance and from_env.rules == ()


def test_a_bad_variable_is_named_as_a_variable():
    with pytest.raises(ValueError, match="Airflow Variable mc_sandbox must be 1 or 0"):
        adapter.settings({}, {"mc_sandbox": "sometimes"}.get)
    with pytest.raises(ValueError, match=r"Airflow Variable mc_sandbox_rules\.hard\[0\]"):
        adapter.settings({}, {"mc_sandbox_rules": '{"hard": [""]}'}.get)
    with pytest.raises(ValueError, match=r"MC_SANDBOX_RULES\.sofft: unknown outcome"):
        adapter.settings({"MC_SANDBOX_RULES": '{"sofft": []}'}, {}.get)


def test_the_banner_flag_reads_the_variable_at_most_once_per_period():
    reads = []

    def read(key):
        reads.append(key)
        return "1"

    flag = adapter.InstanceFlag(read=read, environ={}, cache_seconds=3600)
    assert flag() and flag() and reads == ["mc_sandbox"]
    assert adapter.InstanceFlag(read=read, environ={"MC_SANDBOX": "0"})() is False
    assert adapter.InstanceFlag(read=lambda key: None, environ={})() is False
