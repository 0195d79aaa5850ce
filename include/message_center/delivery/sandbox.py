"""Sandbox mode: a delivery that renders and records like production and sends nothing.

A staging deployment (``MC_SANDBOX=1`` or the Airflow Variable ``mc_sandbox``), or the
events pushed by a sandbox API user (``MC_SANDBOX_USERS``), go through the whole path:
accepted, validated, linked, rendered, recorded in the ledger, copied onto the event,
reported by webhooks. Only the provider is replaced: one :class:`SandboxTransport` stands
in for every channel's sender (:class:`~message_center.delivery.channels.Channels` routes
a sandboxed ledger row to it), so no relay, gateway or push service is ever contacted.

Whether a message is sandboxed is decided once, when its ledger row is armed
(:func:`message_center.delivery.ledger.start_sending`): the event's own flag (set at push
time) or the instance's mode; the row keeps ``sandbox = true``.

**Rules** (``MC_SANDBOX_RULES`` or the Variable ``mc_sandbox_rules``) let a team test its
failure paths: addresses matching a pattern answer a hard bounce (failed, quarantined), a
soft bounce (retried like production, quarantined after the soft threshold) or a timeout
(an ``unknown`` outcome, as a relay that stalls after the final "."). The format, JSON::

    {"hard": ["*@hard.example"], "soft": ["soft-*@example.com"], "timeout": ["*@slow.test"]}

Patterns are shell-style (``*``, ``?``, ``[...]``: :mod:`fnmatch`), matched against the
address in lower case; the first outcome that matches, in the order hard, soft, timeout,
wins. This module is pure (no Airflow): the adapter (``mc_airflow.sandbox``) reads the
environment and the Variables and hands the values to :meth:`SandboxSettings.parse`.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from message_center import channel as registry
from message_center.delivery.classification import Classification
from message_center.delivery.ledger import Attempt
from message_center.delivery.outcome import Outcome
from message_center.statuses import AnswerClass
from message_center.tracking import tokens as tracking_tokens

#: The rule outcomes, in the order they are tried.
RULE_OUTCOMES = ("hard", "soft", "timeout")
MAX_PATTERN_CHARS = 320
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})

SENT_PREFIX = "sandbox-"
HARD_ERROR = "sandbox rule 'hard': 550 5.1.1 mailbox unknown (nothing was sent)"
SOFT_ERROR = "sandbox rule 'soft': 452 4.2.2 mailbox full (nothing was sent)"
TIMEOUT_ERROR = ("sandbox rule 'timeout': no answer after the message was handed over; "
                 "outcome unknown, not retried (nothing was sent)")


def parse_flag(value: Any, where: str) -> bool:
    """``1/true/yes/on`` or ``0/false/no/off`` (empty: off); anything else names ``where``."""
    if isinstance(value, bool):
        return value
    text = "" if value is None else str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{where} must be 1 or 0 (true/false, on/off); got {value!r}")


def parse_users(value: str | Iterable[str] | None, where: str) -> frozenset[str]:
    """User names separated by commas or spaces."""
    if value is None:
        return frozenset()
    names = re.split(r"[\s,]+", value) if isinstance(value, str) else list(value)
    users = set()
    for name in names:
        if not isinstance(name, str):
            raise ValueError(f"{where}: user names must be text; got {name!r}")
        if name.strip():
            users.add(name.strip())
    return frozenset(users)


@dataclass(frozen=True)
class SandboxRule:
    outcome: str
    pattern: str

    def matches(self, address: str) -> bool:
        return fnmatch.fnmatchcase(address.lower(), self.pattern.lower())


def parse_rules(value: str | Mapping[str, Any] | None, where: str) -> tuple[SandboxRule, ...]:
    """The rules from their JSON text (or mapping); a bad value raises ``ValueError``
    naming ``where`` and the key at fault (``mc_sandbox_rules.soft[1]``)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return ()
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where} is not valid JSON: {exc.msg} (line {exc.lineno}, "
                             f"column {exc.colno})") from None
    if not isinstance(value, Mapping):
        raise ValueError(f'{where} must be a JSON object such as {{"hard": ["*@hard.test"]}}')
    rules: list[SandboxRule] = []
    for key in value:
        if key not in RULE_OUTCOMES:
            raise ValueError(f"{where}.{key}: unknown outcome (expected one of "
                             f"{', '.join(RULE_OUTCOMES)})")
    for outcome in RULE_OUTCOMES:
        patterns = value.get(outcome, [])
        if isinstance(patterns, str):
            patterns = [patterns]
        if not isinstance(patterns, list):
            raise ValueError(f"{where}.{outcome} must be a list of address patterns")
        for i, pattern in enumerate(patterns):
            if not isinstance(pattern, str) or not pattern.strip():
                raise ValueError(f"{where}.{outcome}[{i}] must be a non-empty pattern such "
                                 f"as '*@{outcome}.test'; got {pattern!r}")
            if len(pattern) > MAX_PATTERN_CHARS:
                raise ValueError(f"{where}.{outcome}[{i}] is longer than "
                                 f"{MAX_PATTERN_CHARS} characters")
            rules.append(SandboxRule(outcome, pattern.strip()))
    return tuple(rules)


@dataclass(frozen=True)
class SandboxSettings:
    """``instance``: every message of this execution instance is sandboxed; ``users``:
    the API users whose pushed events are; ``rules``: the failure answers by address."""

    instance: bool = False
    users: frozenset[str] = frozenset()
    rules: tuple[SandboxRule, ...] = field(default=())

    @classmethod
    def parse(cls, *, instance: Any = None, users: Any = None, rules: Any = None,
              where: Mapping[str, str] | None = None) -> SandboxSettings:
        names = {"instance": "MC_SANDBOX", "users": "MC_SANDBOX_USERS",
                 "rules": "MC_SANDBOX_RULES", **(where or {})}
        return cls(parse_flag(instance, names["instance"]),
                   parse_users(users, names["users"]),
                   parse_rules(rules, names["rules"]))

    def user_sandboxed(self, user_name: str | None) -> bool:
        """Are the events this user pushes sandboxed?"""
        return user_name is not None and user_name in self.users

    def rule_for(self, address: str | None) -> str | None:
        """The rule outcome for ``address`` (``hard`` / ``soft`` / ``timeout``), or None."""
        if not address:
            return None
        for rule in self.rules:
            if rule.matches(address):
                return rule.outcome
        return None


OFF = SandboxSettings()


class SandboxTransport:
    """The stand-in sender of every channel: renders the message as the channel's own
    sender would (so a template error fails it the same way), then answers by the
    rules, or *sent*; never opens a connection."""

    def __init__(self, settings: SandboxSettings = OFF) -> None:
        self.settings = settings

    def send(self, attempt: Attempt, variables: dict[str, Any],
             ready: Callable[[], None] | None = None) -> Outcome:
        channel = registry.get(attempt.channel)
        row = attempt.row
        try:
            config: Any = tracking_tokens.current()
        except tracking_tokens.TrackingKeyError:
            config = None
        channel.render_sent(row, variables, log_id=attempt.log_id, config=config)
        channel.message_files(row.get("extras") or {}, variables, attempt.address,
                              uid=f"sandbox-{attempt.log_id}")
        rule = self.settings.rule_for(attempt.address)
        if rule == "hard":
            return Outcome.classified(
                Classification(AnswerClass.HARD, "user_unknown", temporary=False,
                               code=550, enhanced="5.1.1"), HARD_ERROR)
        if rule == "soft":
            return Outcome.classified(
                Classification(AnswerClass.SOFT, "mailbox_full", temporary=True,
                               code=452, enhanced="4.2.2"), SOFT_ERROR)
        if ready is not None:  # handed over, as production marks it before the final "."
            ready()
        if rule == "timeout":
            return Outcome.unknown(TIMEOUT_ERROR)
        return Outcome.sent(f"{SENT_PREFIX}{attempt.log_id}")
