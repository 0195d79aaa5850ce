"""Sandbox settings as an operator writes them: flags, user lists and rules, each bad value
refused with the name of the setting (and the key) at fault."""

from __future__ import annotations

import pytest

from message_center.delivery.sandbox import SandboxSettings, parse_flag, parse_rules

pytestmark = pytest.mark.fast


@pytest.mark.parametrize(("raw", "on"), [("1", True), ("true", True), (" ON ", True),
                                         ("yes", True), ("0", False), ("", False),
                                         (None, False), ("off", False)])
def test_flags(raw, on):
    assert parse_flag(raw, "MC_SANDBOX") is on


def test_a_bad_flag_names_the_setting():
    with pytest.raises(ValueError, match=r"MC_SANDBOX must be 1 or 0 .*'maybe'"):
        parse_flag("maybe", "MC_SANDBOX")


def test_rules_match_addresses_by_pattern_in_order_hard_soft_timeout():
    settings = SandboxSettings.parse(rules='{"timeout": ["*@slow.test"], '
                                           '"soft": ["soft-*@example.test", "*@both.test"], '
                                           '"hard": ["*@hard.test", "*@both.test"]}')
    assert settings.rule_for("Bob@HARD.test") == "hard"
    assert settings.rule_for("soft-1@example.test") == "soft"
    assert settings.rule_for("x@slow.test") == "timeout"
    assert settings.rule_for("x@both.test") == "hard"
    assert settings.rule_for("someone@example.test") is None
    assert settings.rule_for(None) is None


@pytest.mark.parametrize(("raw", "message"), [
    ("{not json", r"mc_sandbox_rules is not valid JSON"),
    ('["*@x.test"]', r"mc_sandbox_rules must be a JSON object"),
    ('{"bounce": ["*@x.test"]}', r"mc_sandbox_rules\.bounce: unknown outcome"),
    ('{"soft": {"a": 1}}', r"mc_sandbox_rules\.soft must be a list"),
    ('{"soft": ["*@a.test", ""]}', r"mc_sandbox_rules\.soft\[1\] must be a non-empty"),
    ('{"hard": [42]}', r"mc_sandbox_rules\.hard\[0\] must be a non-empty"),
])
def test_bad_rules_name_the_key_at_fault(raw, message):
    with pytest.raises(ValueError, match=message):
        parse_rules(raw, "mc_sandbox_rules")


def test_users_are_comma_or_space_separated():
    settings = SandboxSettings.parse(users="qa-bot, staging-app  ci")
    assert settings.users == {"qa-bot", "staging-app", "ci"}
    assert settings.user_sandboxed("ci") and not settings.user_sandboxed("shop")
