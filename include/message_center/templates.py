"""Message templates as reviewed files: load, validate, preview, proof and publish.

Templates live in the repository (``include/message_templates/*.yaml``, one file per
event type and channel) so every change goes through a pull request. This module turns
those files into checked :class:`MessageTemplate` objects, reports each problem as
``file:line: field: reason``, renders previews and proofs with the very renderer the
delivery uses (:mod:`message_center.rendering`), stores a new version on the control
database whenever a template's content changes, and brings each execution database's
``published_template`` rows in line with what the control database says is published,
in one transaction per instance.

It never imports Airflow: the publishing DAG, ``mc setup`` and the ``mc templates``
command all call the same functions.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from email import policy as email_policy
from email.message import EmailMessage
from email.utils import make_msgid, parseaddr
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import Connection, text

from mc_local.localenv import PROJECT_ROOT
from message_center.delivery.outcome import Outcome
from message_center.delivery.smtp import (
    DEFAULT_FROM,
    SmtpSender,
    SmtpSettings,
    compose_email,
    envelope_address,
)
from message_center.publishing import TemplateContent, publish, unpublish
from message_center.rendering import (
    RenderedMessage,
    RenderError,
    check_syntax,
    event_variables,
    render_message,
    render_part,
    template_event,
)
from message_center.statuses import CHANNELS

#: The repository's template folder; ``MC_TEMPLATES_DIR`` points elsewhere (tests, layouts).
TEMPLATES_DIR = PROJECT_ROOT / "include" / "message_templates"
#: This deployment's own execution database connection (always a publishing target).
OWN_EXECUTION_CONN_ID = "mc_execution"
#: Serialises publications to one execution database (the DAG, ``mc setup``, the CLI).
_PUBLISH_LOCK_KEY = 0x6D635F74706C  # "mc_tpl"

REQUIRED_FIELDS = ("internal_name", "label", "event_type", "channel", "seeds")
EMAIL_FIELDS = ("subject", "html", "text")
TEXT_FIELDS = ("internal_name", "label", "event_type", "channel", "sender", "subject", "html",
               "text", "sms", "language")
ALLOWED_FIELDS = (*TEXT_FIELDS, "seeds")
SEED_FIELDS = ("address", "ctx", "event")
#: Event fields a seed may set for its test render (besides the address and ``ctx``).
SEED_EVENT_FIELDS = ("id", "external_id", "language", "country", "origin", "scheduled",
                     "expiration", "created")

_INTERNAL_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_EVENT_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,99}$")
_LANGUAGE = re.compile(r"^[a-z]{2,3}([-_][A-Za-z0-9]{2,8})*$")
_EMAIL = re.compile(r"^[^@\s<>\"]+@[^@\s<>\"]+\.[^@\s<>\"]+$")
_PHONE = re.compile(r"^\+?[0-9][0-9 ().\-]{4,22}$")
_TEMPLATE_LINE = re.compile(r"\(line (\d+)\)")


# --------------------------------------------------------------------------- model


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
    subject: str | None = None
    html: str | None = None
    text: str | None = None
    sms: str | None = None
    language: str | None = None
    lines: Mapping[str, int] = field(default_factory=dict)

    def content(self) -> dict[str, str | None]:
        """What is versioned and published (seeds are test data, not content)."""
        return {name: getattr(self, name) for name in TEXT_FIELDS}

    def content_hash(self) -> str:
        return content_hash(self.content())

    def line_of(self, name: str) -> int | None:
        return self.lines.get(name)


def content_hash(content: Mapping[str, Any]) -> str:
    canonical = json.dumps(dict(content), sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def published_content(content: Mapping[str, Any], version: int) -> TemplateContent:
    """A stored version's content as the execution side's publishing takes it."""
    return TemplateContent(
        internal_name=content["internal_name"], label=content["label"],
        event_type=content["event_type"], channel=content["channel"], version=version,
        sender=content.get("sender"), subject=content.get("subject"),
        html_body=content.get("html"), text_body=content.get("text"),
        sms_body=content.get("sms"), language=content.get("language"),
    )


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


# --------------------------------------------------------------------------- YAML with lines


class _Mapping(dict):  # type: ignore[type-arg]
    """A YAML mapping that remembers the line of each key and of each value's text."""

    line: int
    key_lines: dict[str, int]
    body_lines: dict[str, int]


class _Sequence(list):  # type: ignore[type-arg]
    line: int
    item_lines: list[int]


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that records line numbers and refuses duplicate keys (YAML keeps the last)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[Any, int]] = []


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> _Mapping:
    loader.flatten_mapping(node)
    result = _Mapping()
    result.line = node.start_mark.line + 1
    result.key_lines, result.body_lines = {}, {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", key_node.start_mark) from None
        if key in result:
            loader.duplicates.append((key, key_node.start_mark.line + 1))
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
        # A block scalar (| or >) starts on the line after its indicator.
        block = isinstance(value_node, yaml.ScalarNode) and value_node.style in ("|", ">")
        result.body_lines[key] = value_node.start_mark.line + 1 + (1 if block else 0)
    return result


def _construct_sequence(loader: _LineLoader, node: yaml.SequenceNode) -> _Sequence:
    result = _Sequence(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


_LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_LineLoader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)


def _plain(value: Any) -> Any:
    """Drop the line bookkeeping (for contexts handed to the renderer)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


# --------------------------------------------------------------------------- loading & checks


class _FileChecker:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.problems: list[TemplateProblem] = []

    def add(self, line: int | None, field_name: str | None, message: str) -> None:
        self.problems.append(TemplateProblem(self.path, line, field_name, message))

    def load(self) -> MessageTemplate | None:
        try:
            source = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            self.add(None, None, f"cannot read the file: {exc}")
            return None
        loader = _LineLoader(source)
        try:
            data = loader.get_single_data()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            reason = " ".join(part for part in (exc.context, exc.problem) if part)
            self.add(mark.line + 1 if mark else None, None, f"YAML syntax error: {reason}")
            return None
        except yaml.YAMLError as exc:
            self.add(None, None, f"YAML syntax error: {exc}")
            return None
        finally:
            loader.dispose()
        for key, line in loader.duplicates:
            self.add(line, str(key), "defined twice in this file")
        if not isinstance(data, _Mapping):
            self.add(1, None, "a template file must be a mapping of fields "
                     f"({', '.join(REQUIRED_FIELDS)}, ...)")
            return None
        return self._check(data)

    def _string(self, data: _Mapping, name: str, required: bool) -> str | None:
        if name not in data or data[name] is None:
            if required:
                self.add(data.line if name not in data else data.key_lines[name], name,
                         "required field is missing" if name not in data else
                         "required field is empty")
            return None
        value = data[name]
        if not isinstance(value, str):
            self.add(data.key_lines[name], name,
                     f"must be text, got {type(value).__name__} {value!r} (quote it)")
            return None
        if not value.strip():
            self.add(data.key_lines[name], name, "must not be empty")
            return None
        return value

    def _check(self, data: _Mapping) -> MessageTemplate | None:
        for key in data:
            if key not in ALLOWED_FIELDS:
                self.add(data.key_lines[key], str(key),
                         f"unknown field (allowed: {', '.join(ALLOWED_FIELDS)})")
        channel = self._string(data, "channel", required=True)
        if channel is not None and channel not in CHANNELS:
            self.add(data.key_lines["channel"], "channel",
                     f"{channel!r} is not a channel (expected one of {', '.join(CHANNELS)})")
            channel = None
        required = {*REQUIRED_FIELDS, *({"subject"} if channel == "email" else ()),
                    *({"sms"} if channel == "sms" else ())}
        values = {name: self._string(data, name, name in required)
                  for name in TEXT_FIELDS if name != "channel"}
        values["channel"] = channel
        name = values["internal_name"]
        if name is not None and not _INTERNAL_NAME.match(name):
            self.add(data.key_lines["internal_name"], "internal_name",
                     f"{name!r} must start with a letter and use only letters, digits and _ "
                     "(at most 64)")
        if values["event_type"] is not None and not _EVENT_TYPE.match(values["event_type"]):
            self.add(data.key_lines["event_type"], "event_type",
                     f"{values['event_type']!r} must be letters, digits, _ . : - (no spaces)")
        if values["language"] is not None and not _LANGUAGE.match(values["language"]):
            self.add(data.key_lines["language"], "language",
                     f"{values['language']!r} is not a language code such as en or fr-FR")
        if channel == "email":
            self._check_email_fields(data, values)
        elif channel == "sms":
            self._check_sms_fields(data)
        self._check_syntax(data, values)
        seeds = self._seeds(data, channel)
        if self.problems or name is None or channel is None:
            return None
        assert values["label"] is not None and values["event_type"] is not None
        template = MessageTemplate(
            path=self.path, internal_name=name, label=values["label"],
            event_type=values["event_type"], channel=channel, seeds=tuple(seeds),
            sender=values["sender"], subject=values["subject"], html=values["html"],
            text=values["text"], sms=values["sms"], language=values["language"],
            lines={**data.key_lines, **{f"{key}:body": line
                                        for key, line in data.body_lines.items()}},
        )
        self._render_seeds(template)
        return None if self.problems else template

    def _check_email_fields(self, data: _Mapping, values: dict[str, str | None]) -> None:
        if "sms" in data:
            self.add(data.key_lines["sms"], "sms", "not used by an email template "
                     "(use html and/or text)")
        if values["html"] is None and values["text"] is None and not any(
                problem.field in ("html", "text") for problem in self.problems):
            self.add(data.line, "html", "an email template needs an html and/or a text body")
        sender = values["sender"]
        if sender is not None:
            _, address = parseaddr(sender)
            if not _EMAIL.match(address):
                self.add(data.key_lines["sender"], "sender",
                         f"{sender!r} is not an address such as 'Shop <shop@example.com>'")

    def _check_sms_fields(self, data: _Mapping) -> None:
        for name in EMAIL_FIELDS:
            if name in data:
                self.add(data.key_lines[name], name, "not used by an SMS template (use sms)")

    def _check_syntax(self, data: _Mapping, values: dict[str, str | None]) -> None:
        for name in ("subject", "html", "text", "sms"):
            source = values[name]
            if source is None:
                continue
            try:
                check_syntax(source, html=(name == "html"))
            except RenderError as exc:
                self.add(_file_line(data.body_lines[name], str(exc)), name,
                         f"template syntax error: {exc}")

    def _seeds(self, data: _Mapping, channel: str | None) -> list[Seed]:
        if "seeds" not in data:
            return []
        raw = data["seeds"]
        if not isinstance(raw, _Sequence) or not raw:
            self.add(data.key_lines["seeds"], "seeds",
                     "must be a list of seed addresses, each with an address and a ctx")
            return []
        seeds = []
        for index, (item, line) in enumerate(zip(raw, raw.item_lines, strict=True)):
            where = f"seeds[{index}]"
            if not isinstance(item, _Mapping):
                self.add(line, where, "must be a mapping with address and ctx")
                continue
            for key in item:
                if key not in SEED_FIELDS:
                    self.add(item.key_lines[key], f"{where}.{key}",
                             f"unknown field (allowed: {', '.join(SEED_FIELDS)})")
            address = item.get("address")
            if not isinstance(address, str) or not address.strip():
                self.add(item.key_lines.get("address", line), f"{where}.address",
                         "required: the seed's email address or mobile phone number")
            elif channel == "email" and not _EMAIL.match(address):
                self.add(item.key_lines["address"], f"{where}.address",
                         f"{address!r} is not an email address")
            elif channel == "sms" and not _PHONE.match(address):
                self.add(item.key_lines["address"], f"{where}.address",
                         f"{address!r} is not a mobile phone number such as +33612345678")
            ctx = item.get("ctx", {})
            if not isinstance(ctx, dict):
                self.add(item.key_lines["ctx"], f"{where}.ctx",
                         "must be a mapping (the event context the seed renders with)")
                ctx = {}
            event = item.get("event", {})
            if not isinstance(event, dict):
                self.add(item.key_lines["event"], f"{where}.event", "must be a mapping")
                event = {}
            for key in event:
                if key not in SEED_EVENT_FIELDS:
                    self.add(event.key_lines[key], f"{where}.event.{key}",
                             f"not a settable event field ({', '.join(SEED_EVENT_FIELDS)})")
            if "id" in event and (isinstance(event["id"], bool)
                                  or not isinstance(event["id"], int) or event["id"] < 0):
                self.add(event.key_lines["id"], f"{where}.event.id",
                         "must be a positive whole number")
                event = {key: value for key, value in event.items() if key != "id"}
            seeds.append(Seed(address=str(address or "").strip(), ctx=_plain(ctx),
                              event=_plain(event), line=line))
        return seeds

    def _render_seeds(self, template: MessageTemplate) -> None:
        for index, seed in enumerate(template.seeds):
            try:
                render_seed(template, seed)
            except RenderError as exc:
                self.add(seed.line, f"seeds[{index}] ({seed.address})",
                         f"does not render: {exc}")


def _file_line(body_line: int, message: str) -> int:
    """The file line of a Jinja error reported at ``(line N)`` of a field's text."""
    match = _TEMPLATE_LINE.search(message)
    return body_line + int(match.group(1)) - 1 if match else body_line


def template_files(directory: Path) -> list[Path]:
    return sorted(path for path in Path(directory).iterdir()
                  if path.is_file() and path.suffix in (".yaml", ".yml")
                  and not path.name.startswith((".", "_")))


def load_template(path: Path) -> tuple[MessageTemplate | None, list[TemplateProblem]]:
    """One file, checked on its own (the folder-wide checks are in :func:`load_templates`)."""
    checker = _FileChecker(Path(path))
    template = checker.load()
    return template, checker.problems


def load_templates(directory: Path | str | None = None) -> TemplateSet:
    """Load and validate every template file of ``directory`` (default: the repository's).

    Besides each file's own checks: internal names are unique, and one event type has
    at most one template per channel (the link step could not choose otherwise).
    """
    directory = Path(directory or os.environ.get("MC_TEMPLATES_DIR") or TEMPLATES_DIR)
    result = TemplateSet(directory)
    if not directory.is_dir():
        result.problems.append(TemplateProblem(directory, None, None,
                                               "template folder does not exist"))
        return result
    files = template_files(directory)
    if not files:
        result.problems.append(TemplateProblem(directory, None, None,
                                               "no template files (*.yaml) in this folder"))
    names: dict[str, MessageTemplate] = {}
    links: dict[tuple[str, str], MessageTemplate] = {}
    for path in files:
        template, problems = load_template(path)
        result.problems.extend(problems)
        if template is None:
            continue
        other = names.get(template.internal_name)
        if other is not None:
            result.problems.append(TemplateProblem(
                path, template.line_of("internal_name"), "internal_name",
                f"{template.internal_name!r} is already used by "
                f"{display_path(other.path)}:{other.line_of('internal_name')}"))
            continue
        other = links.get((template.event_type, template.channel))
        if other is not None:
            result.problems.append(TemplateProblem(
                path, template.line_of("event_type"), "event_type",
                f"event type {template.event_type!r} already has a {template.channel} "
                f"template: {other.internal_name} in "
                f"{display_path(other.path)}:{other.line_of('event_type')} "
                "(one template per event type and channel)"))
            continue
        names[template.internal_name] = template
        links[(template.event_type, template.channel)] = template
        result.templates.append(template)
    return result


# --------------------------------------------------------------------------- rendering


def seed_event(template: MessageTemplate, seed: Seed) -> dict[str, Any]:
    """The event a seed stands for, as the delivery hands it to the renderer (same
    function, so ``{{ event.externalId }}`` renders in a proof as in a real message)."""
    row: dict[str, Any] = {
        "type": template.event_type,
        "email": seed.address if template.channel == "email" else None,
        "mobile_phone": seed.address if template.channel == "sms" else None,
        "wished_channel": template.channel, "external_id": None,
        "language": template.language, "country": None, "origin": "seed",
        "scheduled": None, "expiration": None, "created": None,
    }
    row.update({key: value for key, value in seed.event.items() if key != "id"})
    row["ctx"] = seed.ctx
    return template_event(row, int(seed.event.get("id", 0)))


@dataclass(frozen=True)
class RenderedSeed:
    template: MessageTemplate
    seed: Seed
    message: RenderedMessage | None = None
    sms: str | None = None


def render_seed(template: MessageTemplate, seed: Seed) -> RenderedSeed:
    """Render ``template`` for ``seed`` exactly as the delivery renders an event."""
    variables = event_variables(seed_event(template, seed))
    if template.channel == "sms":
        return RenderedSeed(template, seed, sms=render_part(template.sms, variables))
    message = render_message(template.subject, template.html, template.text, variables)
    if message.subject is not None and ("\n" in message.subject or "\r" in message.subject):
        raise RenderError("the rendered subject contains a line break")
    return RenderedSeed(template, seed, message=message)


def pick_seed(template: MessageTemplate, which: str | int | None) -> Seed:
    """A seed by position (0-based) or address; the first one by default."""
    if which is None:
        return template.seeds[0]
    if isinstance(which, int) or str(which).isdigit():
        index = int(which)
        if 0 <= index < len(template.seeds):
            return template.seeds[index]
    for seed in template.seeds:
        if seed.address.lower() == str(which).lower():
            return seed
    known = ", ".join(f"{i}: {s.address}" for i, s in enumerate(template.seeds))
    raise KeyError(f"{template.internal_name} has no seed {which!r} (seeds: {known})")


GSM_7BIT = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM_7BIT_EXTENDED = set("^{}\\[~]|€\f")


def sms_segments(body: str) -> tuple[str, int]:
    """(encoding, number of SMS parts) the text takes: GSM 7-bit or UCS-2."""
    if all(char in GSM_7BIT or char in GSM_7BIT_EXTENDED for char in body):
        units = sum(2 if char in GSM_7BIT_EXTENDED else 1 for char in body)
        return "GSM-7", 1 if units <= 160 else -(-units // 153)
    units = len(body.encode("utf-16-le")) // 2
    return "UCS-2", 1 if units <= 70 else -(-units // 67)


PREVIEW_SENDER = DEFAULT_FROM


def write_preview(template: MessageTemplate, seed: Seed, out_dir: Path) -> list[Path]:
    """Render ``template`` for ``seed`` into files a person opens: HTML, text, .eml (email)
    or the SMS text with its length (SMS). Returns the files written."""
    rendered = render_seed(template, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{template.internal_name}.{_safe(seed.address)}"
    written: list[Path] = []
    header = (f"Template: {template.internal_name} ({template.label}), {template.channel}, "
              f"event type {template.event_type}\nSeed: {seed.address}\n")
    if rendered.sms is not None:
        encoding, parts = sms_segments(rendered.sms)
        path = out_dir / f"{stem}.sms.txt"
        path.write_text(f"{header}Length: {len(rendered.sms)} characters, {encoding}, "
                        f"{parts} SMS part(s)\n\n{rendered.sms}", encoding="utf-8")
        return [path]
    message = rendered.message
    assert message is not None
    if message.html is not None:
        path = out_dir / f"{stem}.html"
        path.write_text(message.html, encoding="utf-8")
        written.append(path)
    path = out_dir / f"{stem}.txt"
    path.write_text(
        f"{header}From: {template.sender or PREVIEW_SENDER}\nTo: {seed.address}\n"
        f"Subject: {message.subject}\n\n"
        + (message.text if message.text is not None else "(no text body)\n"),
        encoding="utf-8")
    written.append(path)
    path = out_dir / f"{stem}.eml"
    path.write_bytes(proof_message(rendered, seed.address, PREVIEW_SENDER, "").as_bytes(
        policy=email_policy.default))
    written.append(path)
    return written


def _safe(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9@.+_-]", "_", value)


# --------------------------------------------------------------------------- proofs


def smtp_settings_from_connection(conn: Mapping[str, Any]) -> SmtpSettings:
    """SMTP settings from an Airflow SMTP connection given as JSON (``AIRFLOW_CONN_...``
    or ``airflow connections get -o json``), read the way Airflow's SMTP hook reads it:
    SSL unless ``disable_ssl``, else STARTTLS unless ``disable_tls``."""
    extra = conn.get("extra") or conn.get("extra_dejson") or {}
    if isinstance(extra, str):
        extra = json.loads(extra) if extra.strip() else {}
    use_ssl = not _truthy(extra.get("disable_ssl", False))
    starttls = not use_ssl and not _truthy(extra.get("disable_tls", False))
    port = conn.get("port") or (465 if use_ssl else 587 if starttls else 25)
    return SmtpSettings(host=conn.get("host") or "127.0.0.1", port=int(port),
                        login=conn.get("login") or None, password=conn.get("password") or None,
                        use_ssl=use_ssl, starttls=starttls,
                        from_email=extra.get("from_email") or DEFAULT_FROM,
                        timeout=float(extra.get("timeout", 30)))


def _truthy(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class ProofResult:
    address: str
    seed: str
    outcome: Outcome

    @property
    def sent(self) -> bool:
        return self.outcome.status == "sent"


def proof_message(rendered: RenderedSeed, to: str, default_sender: str,
                  prefix: str) -> EmailMessage:
    """The proof as the delivery composes the real message, with a marked subject."""
    template = rendered.template
    sender = template.sender or default_sender
    if rendered.sms is not None:
        msg = compose_email(log_id=0, sender=sender, recipient=to,
                            subject=f"{prefix}SMS {template.label}", html=None,
                            text=f"SMS to {rendered.seed.address}:\n\n{rendered.sms}")
    else:
        message = rendered.message
        assert message is not None
        msg = compose_email(log_id=0, sender=sender, recipient=to,
                            subject=f"{prefix}{message.subject or ''}", html=message.html,
                            text=message.text)
    del msg["Message-ID"]
    msg["Message-ID"] = make_msgid(domain="message-center.local")
    msg["X-MC-Template"] = template.internal_name
    msg["X-MC-Seed"] = rendered.seed.address
    # SMTP wants CRLF line ends; smtplib's data() does not convert bytes (bare LF makes
    # any body over 1000 bytes one "line too long").
    msg.policy = email_policy.SMTP
    return msg


def send_proofs(template: MessageTemplate, settings: SmtpSettings,
                seeds: Sequence[Seed] | None = None,
                recipients: Sequence[str] | None = None) -> list[ProofResult]:
    """Send the proof of ``template`` rendered for each seed to that seed's address (or to
    ``recipients`` instead), through the delivery's SMTP sender. SMS templates need
    ``recipients``: their proof is the SMS text by email."""
    seeds = list(seeds or template.seeds)
    if template.channel == "sms" and not recipients:
        raise ValueError(f"{template.internal_name} is an SMS template: its seeds are phone "
                         "numbers; give email addresses to receive the SMS text (--to)")
    results = []
    with SmtpSender(settings) as sender:
        for index, seed in enumerate(seeds, start=1):
            rendered = render_seed(template, seed)
            prefix = f"[Proof {index}/{len(seeds)}] "
            for address in recipients or [seed.address]:
                msg = proof_message(rendered, address, settings.from_email, prefix)
                outcome = sender.send(msg, envelope_address(msg["From"]), address)
                results.append(ProofResult(address, seed.address, outcome))
    return results


# --------------------------------------------------------------------------- control database


@dataclass
class PublicationPlan:
    """What one publishing run changed on the control database."""

    stored: list[tuple[str, int]] = field(default_factory=list)   # new versions
    published: list[str] = field(default_factory=list)           # marked published
    unpublished: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)   # same (event type, channel) as a newer
    orphaned: list[str] = field(default_factory=list)   # published, but no file any more

    @property
    def changed(self) -> bool:
        return bool(self.stored or self.published or self.unpublished or self.replaced)

    def summary(self) -> str:
        parts = [f"new versions: {', '.join(f'{n} v{v}' for n, v in self.stored) or 'none'}"]
        if self.published:
            parts.append(f"published: {', '.join(self.published)}")
        if self.unpublished:
            parts.append(f"unpublished: {', '.join(self.unpublished)}")
        if self.replaced:
            parts.append(f"replaced (same event type and channel): {', '.join(self.replaced)}")
        if self.orphaned:
            parts.append("published without a file in the repository (unpublish them with the "
                         f"unpublish param): {', '.join(self.orphaned)}")
        return "; ".join(parts)


def store_version(conn: Connection, template: MessageTemplate) -> tuple[int, bool]:
    """Store ``template`` as a new version when its content differs from the current one.
    Returns (current version, whether it is new). Locks the template row."""
    content = template.content()
    digest = content_hash(content)
    conn.execute(text("""
        INSERT INTO template (internal_name, label, event_type, channel)
        VALUES (:name, :label, :event_type, :channel) ON CONFLICT (internal_name) DO NOTHING
    """), {"name": template.internal_name, "label": template.label,
           "event_type": template.event_type, "channel": template.channel})
    row = conn.execute(text("""
        SELECT t.current_version, v.content_hash FROM template t
        LEFT JOIN template_version v
               ON v.internal_name = t.internal_name AND v.version = t.current_version
        WHERE t.internal_name = :name FOR UPDATE OF t
    """), {"name": template.internal_name}).one()
    if row.content_hash == digest:
        return int(row.current_version), False
    version = int(row.current_version) + 1
    conn.execute(text("""
        INSERT INTO template_version (internal_name, version, content_hash, content)
        VALUES (:name, :version, :hash, CAST(:content AS jsonb))
    """), {"name": template.internal_name, "version": version, "hash": digest,
           "content": json.dumps(content)})
    conn.execute(text("""
        UPDATE template SET current_version = :version, label = :label,
               event_type = :event_type, channel = :channel, updated = now()
        WHERE internal_name = :name
    """), {"name": template.internal_name, "version": version, "label": template.label,
           "event_type": template.event_type, "channel": template.channel})
    return version, True


def mark_published(conn: Connection, names: Iterable[str]) -> tuple[list[str], list[str]]:
    """Mark templates published; any other published template for the same (event type,
    channel) stops being published. Returns (newly published, replaced)."""
    published: list[str] = []
    replaced: list[str] = []
    for name in sorted(set(names)):
        rows = conn.execute(text("""
            UPDATE template o SET published = false, updated = now()
            FROM template t
            WHERE t.internal_name = :name AND o.internal_name <> t.internal_name
              AND o.event_type = t.event_type AND o.channel = t.channel AND o.published
            RETURNING o.internal_name
        """), {"name": name}).scalars().all()
        replaced.extend(rows)
        if conn.execute(text(
                "UPDATE template SET published = true, updated = now() "
                "WHERE internal_name = :name AND NOT published AND current_version > 0"),
                {"name": name}).rowcount:
            published.append(name)
    return published, sorted(set(replaced))


def mark_unpublished(conn: Connection, names: Iterable[str]) -> list[str]:
    rows = conn.execute(text(
        "UPDATE template SET published = false, updated = now() "
        "WHERE internal_name = ANY(:names) AND published RETURNING internal_name"),
        {"names": sorted(set(names))}).scalars().all()
    return sorted(rows)


def plan_publication(conn: Connection, templates: TemplateSet,
                     names: Sequence[str] | None = None,
                     unpublish_names: Sequence[str] = (),
                     only_changed: bool = False) -> PublicationPlan:
    """Apply a publishing request to the control database (the caller's transaction).

    - ``only_changed`` (scheduled runs, ``mc setup``): store new versions of every file
      and publish those whose content changed (a new file is a change).
    - otherwise (a manual run): store and publish the templates ``names`` (default: every
      file, unless ``unpublish_names`` is given, then none), changed or not.
    - ``unpublish_names`` stop being published (they need not have a file any more).
    Raises ValueError naming a bad name; TemplateValidationError when files have problems.
    """
    templates.raise_for_problems()
    by_name = templates.by_name()
    names = list(names or [])
    unpublish_names = list(unpublish_names or [])
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise ValueError(f"no template file for {', '.join(unknown)} "
                         f"(templates: {', '.join(sorted(by_name))})")
    both = sorted(set(names) & set(unpublish_names))
    if both:
        raise ValueError(f"cannot publish and unpublish {', '.join(both)} in one run")
    if unpublish_names:
        known = set(conn.execute(text(
            "SELECT internal_name FROM template WHERE internal_name = ANY(:names)"),
            {"names": unpublish_names}).scalars())
        missing = [name for name in unpublish_names if name not in known | set(by_name)]
        if missing:
            raise ValueError(f"cannot unpublish {', '.join(missing)}: no such template")
    plan = PublicationPlan()
    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PUBLISH_LOCK_KEY})
    if only_changed:
        selected = [t for t in templates.templates if t.internal_name not in unpublish_names]
    elif names:
        selected = [by_name[name] for name in names]
    elif unpublish_names:
        selected = []
    else:
        selected = list(templates.templates)
    to_publish = []
    for template in selected:
        version, new = store_version(conn, template)
        if new:
            plan.stored.append((template.internal_name, version))
        if new or not only_changed:
            to_publish.append(template.internal_name)
    plan.published, plan.replaced = mark_published(conn, to_publish)
    plan.unpublished = mark_unpublished(conn, unpublish_names)
    plan.orphaned = sorted(set(conn.execute(text(
        "SELECT internal_name FROM template WHERE published")).scalars()) - set(by_name))
    return plan


def desired_state(conn: Connection) -> list[TemplateContent]:
    """What every execution instance should have active: the current version of every
    published template on the control database."""
    rows = conn.execute(text("""
        SELECT v.version, v.content FROM template t
        JOIN template_version v
          ON v.internal_name = t.internal_name AND v.version = t.current_version
        WHERE t.published ORDER BY t.internal_name
    """)).all()
    return [published_content(row.content, int(row.version)) for row in rows]


# --------------------------------------------------------------------------- execution side


@dataclass
class SyncResult:
    """What one execution instance got in a publishing run."""

    published: list[tuple[str, int]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.published or self.removed)

    def summary(self) -> str:
        published = ", ".join(f"{name} v{version}" for name, version in self.published)
        return (f"published: {published or 'none'}; removed: "
                f"{', '.join(self.removed) or 'none'}; unchanged: {self.unchanged}")

    def as_dict(self) -> dict[str, Any]:
        return {"published": [f"{n} v{v}" for n, v in self.published],
                "removed": self.removed, "unchanged": self.unchanged}


def active_templates(conn: Connection) -> dict[str, TemplateContent]:
    """The active published templates of an execution database, by internal name."""
    rows = conn.execute(text("""
        SELECT internal_name, label, event_type, channel, version, sender, subject,
               html_body, text_body, sms_body, language
        FROM published_template WHERE active ORDER BY internal_name, version
    """)).mappings().all()
    return {row["internal_name"]: TemplateContent(**dict(row)) for row in rows}


def sync_instance(conn: Connection, desired: Sequence[TemplateContent]) -> SyncResult:
    """Make the execution database's active templates exactly ``desired``: publish what
    differs, deactivate what is no longer published. Run it in one transaction so the
    instance switches at once (the link step never sees a half publication)."""
    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PUBLISH_LOCK_KEY})
    current = active_templates(conn)
    wanted = {template.internal_name: template for template in desired}
    result = SyncResult()
    for name in sorted(set(current) - set(wanted)):
        unpublish(conn, name)
        result.removed.append(name)
    for name, template in sorted(wanted.items()):
        if current.get(name) == template:
            result.unchanged += 1
            continue
        publish(conn, template)
        result.published.append((name, template.version))
    return result


def in_sync(conn: Connection, desired: Sequence[TemplateContent]) -> bool:
    return active_templates(conn) == {template.internal_name: template for template in desired}


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class PublishTarget:
    """An execution database templates are published to, by Airflow connection id."""

    conn_id: str
    label: str

    def as_dict(self) -> dict[str, str]:
        return {"conn_id": self.conn_id, "label": self.label}


def publish_targets(conn_ids: Sequence[str] | None = None) -> tuple[list[PublishTarget],
                                                                     list[str]]:
    """Every enabled registered execution account plus this deployment's own execution
    database, deduplicated by connection id (or exactly ``conn_ids``). Returns the targets
    and warnings (registry problems, disabled accounts)."""
    from message_center.registry import load_registry

    if conn_ids:
        return [PublishTarget(conn_id, conn_id) for conn_id in dict.fromkeys(conn_ids)], []
    targets = {OWN_EXECUTION_CONN_ID: PublishTarget(OWN_EXECUTION_CONN_ID,
                                                    "this deployment's execution instance")}
    registry = load_registry()
    warnings = [f"account registry: {error}" for error in registry.errors]
    for account in registry.accounts:
        if not account.enabled:
            warnings.append(f"account {account.name} is disabled: not published to")
            continue
        if account.conn_id == OWN_EXECUTION_CONN_ID:
            targets[account.conn_id] = PublishTarget(account.conn_id, account.label)
        targets.setdefault(account.conn_id, PublishTarget(account.conn_id, account.label))
    return sorted(targets.values(), key=lambda t: t.conn_id), warnings


def targets_behind(desired: Sequence[TemplateContent], targets: Sequence[PublishTarget],
                   url_of: Callable[[str], str]) -> tuple[list[PublishTarget], list[str]]:
    """The targets whose active templates differ from ``desired``, plus notes; a target
    that cannot be reached counts as behind (its publish task reports why)."""
    from message_center.db import engine_for

    behind, notes = [], []
    for target in targets:
        try:
            with engine_for(with_connect_timeout(url_of(target.conn_id), 5)).connect() as conn:
                if in_sync(conn, desired):
                    continue
                notes.append(f"{target.conn_id}: behind the control database")
        except Exception as exc:  # an unknown connection, a down server: publish reports it
            notes.append(f"{target.conn_id}: not checked: {first_line(exc)}")
        behind.append(target)
    return behind, notes


# --------------------------------------------------------------------------- without Airflow


def with_connect_timeout(url: str, seconds: int = 10) -> str:
    """A down instance must fail fast, not hang the run (libpq waits forever by default)."""
    if "connect_timeout=" in url:
        return url
    return f"{url}{'&' if '?' in url else '?'}connect_timeout={seconds}"


@dataclass
class PublishReport:
    plan: PublicationPlan
    results: dict[str, SyncResult] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # instance -> why not published


def publish_repository(control_url: str, execution_urls: Mapping[str, str],
                       directory: Path | None = None, only_changed: bool = True,
                       names: Sequence[str] | None = None,
                       unpublish_names: Sequence[str] = ()) -> PublishReport:
    """The whole publication by database URLs (``mc setup``, ``mc templates publish``):
    the DAG does the same steps, one task per execution instance. An instance that cannot
    be reached is reported in ``errors`` and does not stop the others."""
    from sqlalchemy.exc import SQLAlchemyError

    from message_center.db import engine_for

    template_set = load_templates(directory)
    with engine_for(control_url).begin() as conn:
        plan = plan_publication(conn, template_set, names=names,
                                unpublish_names=unpublish_names, only_changed=only_changed)
    with engine_for(control_url).connect() as conn:
        desired = desired_state(conn)
    report = PublishReport(plan)
    for label, url in execution_urls.items():
        try:
            with engine_for(with_connect_timeout(url)).begin() as conn:
                report.results[label] = sync_instance(conn, desired)
        except SQLAlchemyError as exc:
            report.errors[label] = first_line(exc)
    return report


def first_line(exc: BaseException) -> str:
    """A one-line reason for a log or a report (driver errors span several lines)."""
    message = str(getattr(exc, "orig", None) or exc).strip()
    return f"{type(exc).__name__}: {message.splitlines()[0] if message else ''}"[:500]


def publish_to_deployment(deployment: Any) -> str:
    """``mc setup``: version the repository's templates on the local control database and
    publish the changed ones to both local execution databases (idempotent). Returns a
    line for the set-up log; a template problem is reported, not raised, so the rest of
    the set-up goes on."""
    urls = {deployment.database(role): deployment.database_url(role)
            for role in ("execution", "execution2")}
    try:
        report = publish_repository(deployment.database_url("control"), urls)
    except (TemplateValidationError, ValueError) as exc:
        return f"message templates NOT published: {exc}"
    lines = [f"message templates: {report.plan.summary()}"]
    lines += [f"{name}: {result.summary()}" for name, result in report.results.items()
              if result.changed]
    lines += [f"{name}: NOT published: {error}" for name, error in report.errors.items()]
    return "; ".join(lines)
