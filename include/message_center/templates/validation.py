"""Loading and checking template files: every problem is reported with its file and line.

:func:`load_templates` reads a folder (the caller says which: the DAG and the ``mc``
command pass ``include/message_templates`` or ``MC_TEMPLATES_DIR``), checks each file on
its own (fields, syntax, addresses, a render of every seed with the delivery's
renderer) and then across files (unique names, one template per event type and channel).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from message_center import channel as channels
from message_center.channel import Channel, RenderedParts
from message_center.link_marks import TRACKED_FILTER
from message_center.rendering import (
    RenderError,
    check_syntax,
    event_variables,
    template_event,
    template_filters,
    template_variables,
)
from message_center.statuses import RECYCLE_AFTER
from message_center.templates import ctx_schema
from message_center.templates.model import (
    REQUIRED_FIELDS,
    SEED_EVENT_FIELDS,
    SEED_FIELDS,
    MessageTemplate,
    Seed,
    TemplateProblem,
    TemplateSet,
    allowed_fields,
    display_path,
    extra_fields,
    part_fields,
    text_fields,
)
from message_center.templates.source import (
    LineLoader,
    LineMapping,
    LineSequence,
    plain,
    template_files,
)
from message_center.tracking import options as tracking_options

_INTERNAL_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_EVENT_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,99}$")
_LANGUAGE = re.compile(r"^[a-z]{2,3}([-_][A-Za-z0-9]{2,8})*$")
_TEMPLATE_LINE = re.compile(r"\(line (\d+)\)")


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
        loader = LineLoader(source)
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
        if not isinstance(data, LineMapping):
            self.add(1, None, "a template file must be a mapping of fields "
                     f"({', '.join(REQUIRED_FIELDS)}, ...)")
            return None
        return self._check(data)

    def _string(self, data: LineMapping, name: str, required: bool) -> str | None:
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

    def _check(self, data: LineMapping) -> MessageTemplate | None:
        allowed = allowed_fields()
        for key in data:
            if key not in allowed:
                self.add(data.key_lines[key], str(key),
                         f"unknown field (allowed: {', '.join(allowed)})")
        channel = self._string(data, "channel", required=True)
        spec: Channel | None = None
        if channel is not None and channel not in channels.names():
            self.add(data.key_lines["channel"], "channel",
                     f"{channel!r} is not a channel (expected one of "
                     f"{', '.join(channels.names())})")
            channel = None
        elif channel is not None:
            spec = channels.get(channel)
        required = {*REQUIRED_FIELDS, *(spec.required_parts if spec else ())}
        values = {name: self._string(data, name, name in required)
                  for name in text_fields() if name != "channel"}
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
        if spec is not None:
            self._check_channel_fields(data, values, spec)
        self._check_syntax(data, values)
        tracking = self._tracking(data, values, spec)
        schema = self._ctx_declaration(data)
        on_failure = self._on_failure(data, channel)
        extras = self._extras(data, spec)
        seeds = self._seeds(data, spec)
        if self.problems or name is None or channel is None:
            return None
        assert values["label"] is not None and values["event_type"] is not None
        assert spec is not None
        if schema is not None:
            self._check_declared_variables(data, values, schema, spec)
            seeds = self._fit_seeds(seeds, schema, name)
            if self.problems:
                return None
        template = MessageTemplate(
            path=self.path, internal_name=name, label=values["label"],
            event_type=values["event_type"], channel=channel, seeds=tuple(seeds),
            sender=values["sender"], language=values["language"],
            parts={part: values[part] for part in spec.template_parts},
            lines={**data.key_lines, **{f"{key}:body": line
                                        for key, line in data.body_lines.items()}},
            ctx_schema=schema, tracking=tracking, on_failure=on_failure, extras=extras,
        )
        self._render_seeds(template)
        return None if self.problems else template

    def _tracking(self, data: LineMapping, values: dict[str, str | None],
                  spec: Channel | None) -> tracking_options.TrackingOptions:
        """``tracking``, ``mirror_page``, ``unsubscribe``: their values, that the channel
        tracks, and that ``mirror_url`` / ``unsubscribe_url`` are only used when on."""
        options, problems = tracking_options.parse(data)
        for field_name, message in problems:
            self.add(data.key_lines.get(field_name.split(".")[0], data.line), field_name,
                     message)
        if spec is not None and options.any and not spec.tracks:
            field_name = next(f for f in tracking_options.FIELDS if f in data)
            self.add(data.key_lines[field_name], field_name,
                     f"{spec.template_noun} cannot be tracked (only channels that track, "
                     "such as email)")
        if spec is None:
            return options
        wanted = {tracking_options.MIRROR_VARIABLE: (options.mirror_page, "mirror_page: true"),
                  tracking_options.UNSUBSCRIBE_VARIABLE: (
                      bool(options.unsubscribe_category), "unsubscribe: {category: ...}")}
        for part in spec.template_parts:
            source = values.get(part)
            if source is None:
                continue
            try:
                used = template_variables(source, html=part in spec.html_parts)
            except Exception:  # a syntax error: reported by _check_syntax
                continue
            for variable, (enabled, setting) in wanted.items():
                if variable in used and not enabled:
                    self.add(data.key_lines[part], part,
                             f"uses {variable}, which needs {setting} in this template")
            self._tracked_filter(data, spec, part, source, options)
        return options

    def _tracked_filter(self, data: LineMapping, spec: Channel, part: str, source: str,
                        options: tracking_options.TrackingOptions) -> None:
        """``| tracked`` marks a link of an e-mail's text part: only there, and only with
        ``tracking: {clicks: true}``."""
        html = part in spec.html_parts
        try:
            if TRACKED_FILTER not in template_filters(source, html=html):
                return
        except Exception:  # a syntax error: reported by _check_syntax
            return
        if not spec.tracks or html or part != "text":
            self.add(data.key_lines[part], part,
                     f"the {TRACKED_FILTER} filter marks links of an e-mail's text part only "
                     "(the links of the HTML part are tracked with tracking: {clicks: true})")
        elif not options.clicks:
            self.add(data.key_lines[part], part,
                     f"uses the {TRACKED_FILTER} filter, which needs tracking: "
                     "{clicks: true} in this template")

    def _ctx_declaration(self, data: LineMapping) -> ctx_schema.CtxSchema | None:
        """The ``ctx:`` declaration (None when the file has none)."""
        if "ctx" not in data:
            return None
        raw = data["ctx"]
        schema, problems = ctx_schema.parse_declaration(raw)
        for field_name, message in problems:
            line = (raw.key_lines.get(field_name) if isinstance(raw, LineMapping)
                    and field_name is not None else None) or data.key_lines["ctx"]
            self.add(line, f"ctx.{field_name}" if field_name else "ctx", message)
        return schema

    def _extras(self, data: LineMapping, spec: Channel | None) -> dict[str, Any]:
        """The channel's structured fields (e-mail ``attachments``), parsed by the
        channel (static files are read from the template's folder)."""
        extras: dict[str, Any] = {}
        for name in extra_fields():
            if name not in data:
                continue
            line = data.key_lines[name]
            if spec is None:
                continue
            if name not in spec.extra_fields:
                self.add(line, name, f"not used by {spec.template_noun}")
                continue
            value, problems = spec.parse_extra_field(name, plain(data[name]), self.path.parent)
            for field_name, message in problems:
                self.add(line, field_name, message)
            if value is not None:
                extras[name] = value
        return extras

    def _on_failure(self, data: LineMapping, channel: str | None) -> dict[str, Any] | None:
        """The ``on_failure:`` fallback: ``{channel, template, after: [...]}`` (None when
        the file has none). That the named template exists with that channel is checked
        across files (:func:`load_templates`)."""
        if "on_failure" not in data:
            return None
        raw, line = data["on_failure"], data.key_lines["on_failure"]
        if not isinstance(raw, LineMapping):
            self.add(line, "on_failure", "must be a mapping with channel, template and after "
                     f"(after: any of {', '.join(RECYCLE_AFTER)})")
            return None
        for key in raw:
            if key not in ("channel", "template", "after"):
                self.add(raw.key_lines.get(key, line), f"on_failure.{key}",
                         "unknown field (allowed: channel, template, after)")
        fallback, template, after = raw.get("channel"), raw.get("template"), raw.get("after")
        if not isinstance(fallback, str) or fallback not in channels.names():
            self.add(raw.key_lines.get("channel", line), "on_failure.channel",
                     f"{fallback!r} is not a channel (expected one of "
                     f"{', '.join(channels.names())})")
        elif fallback == channel:
            self.add(raw.key_lines.get("channel", line), "on_failure.channel",
                     "must be another channel than the template's own")
        if not isinstance(template, str) or not _INTERNAL_NAME.match(template):
            self.add(raw.key_lines.get("template", line), "on_failure.template",
                     f"{template!r} must be the internal name of a template of the fallback "
                     "channel")
        if (not isinstance(after, list) or not after
                or any(item not in RECYCLE_AFTER for item in after)):
            self.add(raw.key_lines.get("after", line), "on_failure.after",
                     f"must be a list of outcomes among {', '.join(RECYCLE_AFTER)} "
                     f"(got {plain(after)!r}; 'unknown' outcomes are never recycled: the "
                     "first message may have arrived)")
            return None
        if any(p.field and p.field.startswith("on_failure") for p in self.problems):
            return None
        return {"channel": fallback, "template": template,
                "after": sorted(set(after), key=RECYCLE_AFTER.index)}

    def _check_declared_variables(self, data: LineMapping, values: dict[str, str | None],
                                  schema: ctx_schema.CtxSchema, spec: Channel) -> None:
        """With a declaration, every variable the template reads must be declared (or be
        ``ctx`` / ``event``): the push-time check is only as good as the declaration."""
        for part in spec.template_parts:
            source = values[part]
            if source is None:
                continue
            for variable in sorted(template_variables(source, html=part in spec.html_parts)
                                   - set(schema) - {"ctx", "event"}
                                   - set(tracking_options.VARIABLES)):
                self.add(data.key_lines[part], part,
                         f"uses the variable {variable!r}, which ctx does not declare "
                         f"(add it to ctx, e.g. {variable}: string?)")

    def _fit_seeds(self, seeds: list[Seed], schema: ctx_schema.CtxSchema,
                   name: str) -> list[Seed]:
        """Each seed's ctx must pass the push-time check; seeds render normalised, as a
        pushed event would be stored."""
        fitted = []
        for index, seed in enumerate(seeds):
            normalised, problems = ctx_schema.check_ctx(schema, seed.ctx, name)
            for field_name, message in problems:
                self.add(seed.line, f"seeds[{index}].{field_name}",
                         f"does not fit the ctx declaration: {message}")
            fitted.append(seed if normalised is None else Seed(
                address=seed.address, ctx=normalised, event=seed.event, line=seed.line))
        return fitted

    def _check_channel_fields(self, data: LineMapping, values: dict[str, str | None],
                              spec: Channel) -> None:
        """Other channels' parts are refused; then the channel's own checks."""
        for name in part_fields():
            if name in data and name not in spec.template_parts:
                self.add(data.key_lines[name], name,
                         f"not used by {spec.template_noun} (use {spec.parts_hint})")
        flagged = {problem.field for problem in self.problems}

        def problem(field_name: str | None, message: str) -> None:
            if field_name in flagged:
                return  # already reported for this field
            line = data.key_lines.get(field_name) if values.get(field_name or "") else None
            self.add(line or data.line, field_name, message)

        spec.check_template(values, sorted(f for f in flagged if f), problem)

    def _check_syntax(self, data: LineMapping, values: dict[str, str | None]) -> None:
        html_parts = {part for c in channels.all_channels() for part in c.html_parts}
        for name in part_fields():
            source = values[name]
            if source is None:
                continue
            try:
                check_syntax(source, html=name in html_parts)
            except RenderError as exc:
                self.add(_file_line(data.body_lines[name], str(exc)), name,
                         f"template syntax error: {exc}")

    def _seeds(self, data: LineMapping, spec: Channel | None) -> list[Seed]:
        if "seeds" not in data:
            return []
        raw = data["seeds"]
        if not isinstance(raw, LineSequence) or not raw:
            self.add(data.key_lines["seeds"], "seeds",
                     "must be a list of seed addresses, each with an address and a ctx")
            return []
        seeds = []
        for index, (item, line) in enumerate(zip(raw, raw.item_lines, strict=True)):
            where = f"seeds[{index}]"
            if not isinstance(item, LineMapping):
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
            elif spec is not None and (error := spec.seed_address_error(address)):
                self.add(item.key_lines["address"], f"{where}.address", error)
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
            seeds.append(Seed(address=str(address or "").strip(), ctx=plain(ctx),
                              event=plain(event), line=line))
        return seeds

    def _render_seeds(self, template: MessageTemplate) -> None:
        for index, seed in enumerate(template.seeds):
            try:
                render_seed(template, seed)
                spec = channels.get(template.channel)
                variables = event_variables(seed_event(template, seed))
                for name, value in template.extras.items():
                    spec.check_extra_field(name, value, variables, seed.address)
            except RenderError as exc:
                self.add(seed.line, f"seeds[{index}] ({seed.address})",
                         f"does not render: {exc}")


def _file_line(body_line: int, message: str) -> int:
    """The file line of a Jinja error reported at ``(line N)`` of a field's text."""
    match = _TEMPLATE_LINE.search(message)
    return body_line + int(match.group(1)) - 1 if match else body_line


def load_template(path: Path) -> tuple[MessageTemplate | None, list[TemplateProblem]]:
    """One file, checked on its own (the folder-wide checks are in :func:`load_templates`)."""
    checker = _FileChecker(Path(path))
    template = checker.load()
    return template, checker.problems


def load_templates(directory: Path | str) -> TemplateSet:
    """Load and validate every template file of ``directory``.

    Besides each file's own checks: internal names are unique, and one event type has
    at most one template per channel (the link step could not choose otherwise).
    """
    directory = Path(directory)
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
    for template in list(result.templates):
        problem = _fallback_problem(template, names)
        if problem is not None:
            result.problems.append(TemplateProblem(
                template.path, template.line_of("on_failure"), "on_failure.template", problem))
    return result


def _fallback_problem(template: MessageTemplate,
                      names: dict[str, MessageTemplate]) -> str | None:
    """Why ``template``'s fallback cannot be used (None: it can, or there is none)."""
    if template.on_failure is None:
        return None
    name, channel = template.on_failure["template"], template.on_failure["channel"]
    fallback = names.get(name)
    if fallback is None:
        return f"no template {name!r} in this folder"
    if fallback.channel != channel:
        return f"{name!r} is a {fallback.channel} template, not {channel}"
    if fallback.on_failure is not None:
        return (f"{name!r} has an on_failure of its own: a recycled event is never "
                "recycled again, remove one of them")
    return None


def seed_event(template: MessageTemplate, seed: Seed) -> dict[str, Any]:
    """The event a seed stands for, as the delivery hands it to the renderer (same
    function, so ``{{ event.externalId }}`` renders in a proof as in a real message)."""
    spec = channels.get(template.channel)
    row: dict[str, Any] = {
        "type": template.event_type, "email": None, "mobile_phone": None, "address": None,
        "wished_channel": template.channel, "external_id": None,
        "language": template.language, "country": None, "origin": "seed",
        "scheduled": None, "expiration": None, "created": None,
    }
    row[spec.address_column] = seed.address
    row.update({key: value for key, value in seed.event.items() if key != "id"})
    row["ctx"] = seed.ctx
    return template_event(row, int(seed.event.get("id", 0)))


@dataclass(frozen=True)
class RenderedSeed:
    """A template rendered for a seed: its parts by name (also as attributes:
    ``rendered.subject``)."""

    template: MessageTemplate
    seed: Seed
    parts: RenderedParts

    def __getattr__(self, name: str) -> str | None:
        if name.startswith("_") or name == "parts":
            raise AttributeError(name)
        if name in self.parts or name in part_fields():
            return self.parts.get(name)
        raise AttributeError(name)


def render_seed(template: MessageTemplate, seed: Seed) -> RenderedSeed:
    """Render ``template`` for ``seed`` exactly as the delivery renders an event."""
    variables = event_variables(seed_event(template, seed))
    spec = channels.get(template.channel)
    options = template.tracking.as_content()
    return RenderedSeed(template, seed, spec.render(template.parts, variables, options)
                        if options else spec.render(template.parts, variables))
