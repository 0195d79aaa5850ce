"""Message templates as checked objects: what a template file becomes once validated.

:class:`MessageTemplate` is one file's content (what is versioned and published) with its
seeds (test data) and the line of each field; :class:`TemplateSet` is a folder of them
with the problems found; :class:`TemplateProblem` is one problem located for the person
fixing it (``file:line: field: reason``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from message_center.channel import all_channels, content_parts, part_fields

REQUIRED_FIELDS = ("internal_name", "label", "event_type", "channel", "seeds")
#: The fields every template has; each channel adds its parts (``Channel.template_parts``).
COMMON_TEXT_FIELDS = ("internal_name", "label", "event_type", "channel", "sender",
                      "language")


def text_fields() -> tuple[str, ...]:
    """The text fields of a template file: the common ones and every channel's parts."""
    return (*COMMON_TEXT_FIELDS[:5], *part_fields(), *COMMON_TEXT_FIELDS[5:])


def allowed_fields() -> tuple[str, ...]:
    return (*text_fields(), "ctx", "seeds", "on_failure", *extra_fields())


def extra_fields() -> tuple[str, ...]:
    """Structured fields some channel accepts (e-mail: ``attachments``)."""
    return tuple(sorted({name for channel in all_channels() for name in channel.extra_fields}))


SEED_FIELDS = ("address", "ctx", "event")
#: Event fields a seed may set for its test render (besides the address and ``ctx``).
SEED_EVENT_FIELDS = ("id", "external_id", "language", "country", "origin", "scheduled",
                     "expiration", "created")


@dataclass(frozen=True)
class TemplateProblem:
    """One thing wrong with a template file, located for the person fixing it."""

    path: Path
    line: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = f"{display_path(self.path)}:{self.line}" if self.line else display_path(
            self.path)
        return f"{where}: {self.field}: {self.message}" if self.field else (
            f"{where}: {self.message}")


class TemplateValidationError(ValueError):
    """Raised when templates are used (published, previewed) while files have problems."""

    def __init__(self, problems: Sequence[TemplateProblem]) -> None:
        self.problems = list(problems)
        super().__init__("invalid message templates:\n" + "\n".join(
            f"  {problem}" for problem in self.problems))


@dataclass(frozen=True)
class Seed:
    """A seed address with the test context a preview, proof and validation render."""

    address: str
    ctx: dict[str, Any]
    event: dict[str, Any]
    line: int


@dataclass(frozen=True)
class MessageTemplate:
    path: Path
    internal_name: str
    label: str
    event_type: str
    channel: str
    seeds: tuple[Seed, ...]
    sender: str | None = None
    language: str | None = None
    #: The channel's template parts (``subject``/``html``/``text`` of an e-mail, ...);
    #: also readable as attributes (``template.subject``).
    parts: Mapping[str, str | None] = field(default_factory=dict)
    lines: Mapping[str, int] = field(default_factory=dict)
    #: The declared ``ctx`` fields (``ctx_schema.parse_declaration``); None: not declared.
    ctx_schema: Mapping[str, Mapping[str, Any]] | None = None
    #: The fallback after a failed delivery (``{"channel", "template", "after"}``); None:
    #: failures are not recycled.
    on_failure: Mapping[str, Any] | None = None
    #: The channel's structured fields as stored (e-mail ``attachments``: static files as
    #: base64 with their hash, generated ones as templates).
    extras: Mapping[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> str | None:
        """A template part by name (None when this template has no such part)."""
        if name.startswith("_") or name == "parts":
            raise AttributeError(name)
        if name in self.parts or name in part_fields():
            return self.parts.get(name)
        raise AttributeError(name)

    def content(self) -> dict[str, Any]:
        """What is versioned and published (seeds are test data, not content). The ``ctx``
        declaration is part of it only when there is one, so the versions of templates
        without one keep their content hash."""
        content: dict[str, Any] = {name: getattr(self, name) for name in COMMON_TEXT_FIELDS}
        content.update({part: self.parts.get(part) for part in content_parts(self.channel)})
        if self.ctx_schema is not None:
            content["ctx"] = {name: dict(spec) for name, spec in self.ctx_schema.items()}
        if self.on_failure is not None:  # same rule: hashes of older versions stay
            content["on_failure"] = dict(self.on_failure)
        content.update(self.extras)  # same rule
        return content

    def content_hash(self) -> str:
        return content_hash(self.content())

    def line_of(self, name: str) -> int | None:
        return self.lines.get(name)


def content_hash(content: Mapping[str, Any]) -> str:
    canonical = json.dumps(dict(content), sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class TemplateSet:
    """Every template file of a folder, with the problems found in them."""

    directory: Path
    templates: list[MessageTemplate] = field(default_factory=list)
    problems: list[TemplateProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_for_problems(self) -> None:
        if self.problems:
            raise TemplateValidationError(self.problems)

    def by_name(self) -> dict[str, MessageTemplate]:
        return {template.internal_name: template for template in self.templates}

    def find(self, name: str) -> MessageTemplate:
        """A template by internal name, file name or path."""
        for template in self.templates:
            if name in (template.internal_name, template.path.name, template.path.stem,
                        str(template.path)):
                return template
        known = ", ".join(sorted(t.internal_name for t in self.templates)) or "none"
        raise KeyError(f"no template {name!r} in {display_path(self.directory)} "
                       f"(templates: {known})")


def display_path(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
