"""Renders message templates from an event: Jinja2 in a sandbox, strict about variables.

One renderer serves delivery, template validation, previews and proofs, so what a
proof shows is exactly what recipients get. A template error or a missing variable
raises :class:`RenderError` with a readable reason; the caller fails that one message.
The reason says where and why: the part and line, the expression that failed and the
values it read, e.g. ``template error: TypeError: must be real number, not str; at html
line 17: {{ "%.2f"|format(total) }} with total = '42.00' (str)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError, Undefined, UndefinedError, meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from message_center.ids import to_public
from message_center.link_marks import TRACKED_FILTER, mark_link, strip_marks

MAX_RENDERED_CHARS = 1_000_000
_MAX_VALUE_CHARS = 80
_NOTHING = object()
_EXPRESSION = re.compile(r"\{\{-?(.*?)-?\}\}", re.S)


class RenderError(ValueError):
    """The template cannot be rendered for this event (syntax, missing variable, sandbox)."""


@dataclass(frozen=True)
class RenderedMessage:
    subject: str | None
    html: str | None
    text: str | None


def _environment(autoescape: bool) -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        autoescape=autoescape, undefined=StrictUndefined, keep_trailing_newline=True,
        cache_size=0,
    )
    env.filters[TRACKED_FILTER] = mark_link
    return env


_TEXT_ENV = _environment(autoescape=False)
_HTML_ENV = _environment(autoescape=True)


@lru_cache(maxsize=512)
def _compile(source: str, html: bool) -> Any:
    env = _HTML_ENV if html else _TEXT_ENV
    template = env.from_string(source)
    # Jinja keeps a template's globals as a ChainMap over the environment's and copies
    # it into every render's context (a Python-level iteration, ~5% of a delivering
    # shard's CPU); neither changes after start-up, so a flat copy renders the same.
    template.globals = dict(template.globals)
    return template


def check_syntax(source: str, html: bool = False) -> None:
    """Raise RenderError (with the line) when ``source`` is not a valid template."""
    try:
        _compile(source, html)
    except TemplateError as exc:
        line = getattr(exc, "lineno", None)
        raise RenderError(f"{exc.message or exc}" + (f" (line {line})" if line else "")) from None


def template_variables(source: str, html: bool = False) -> set[str]:
    """The top-level variables ``source`` reads (loop and ``set`` variables excluded)."""
    env = _HTML_ENV if html else _TEXT_ENV
    return set(meta.find_undeclared_variables(env.parse(source))) - set(env.globals)


def template_filters(source: str, html: bool = False) -> set[str]:
    """The filters ``source`` uses (``{{ x | f }}`` and ``{% filter f %}``)."""
    env = _HTML_ENV if html else _TEXT_ENV
    return {node.name for node in env.parse(source).find_all(nodes.Filter)}


def _shown(value: Any) -> str:
    text = repr(value)
    if len(text) > _MAX_VALUE_CHARS:
        text = text[:_MAX_VALUE_CHARS - 3] + "..."
    return f"{text} ({type(value).__name__})"


def _failing_frame(exc: BaseException) -> tuple[int, dict[str, Any]] | None:
    """The template line that raised and the template's variables there (Jinja rewrites
    the traceback so template frames carry both)."""
    found = None
    tb = exc.__traceback__
    while tb is not None:
        if "__jinja_exception__" in tb.tb_frame.f_globals:
            found = (tb.tb_lineno, dict(tb.tb_frame.f_locals))
        tb = tb.tb_next
    return found


def _paths(expression: str, env: Any) -> list[str]:
    """The variables and attribute paths an expression reads (``total``, ``item.price``)."""
    try:
        tree = env.parse("{{ " + expression + " }}")
    except TemplateError:
        return []
    found: list[str] = []

    def path(node: Any) -> str | None:
        if isinstance(node, nodes.Name):
            return node.name
        if isinstance(node, nodes.Getattr):
            base = path(node.node)
            return f"{base}.{node.attr}" if base else None
        return None

    for node in tree.find_all((nodes.Getattr, nodes.Name)):
        name = path(node)
        if name and not any(other.startswith(name + ".") or other == name
                            for other in found):
            found = [other for other in found if not name.startswith(other + ".")]
            found.append(name)
    return found


def _where(source: str, html: bool, part: str | None, exc: BaseException) -> str:
    """``at <part> line N: {{ expression }} with name = value`` for a render failure."""
    frame = _failing_frame(exc)
    if frame is None:
        return f" (in {part})" if part else ""
    line, scope = frame
    lines = source.splitlines()
    text = lines[line - 1] if 0 < line <= len(lines) else ""
    env = _HTML_ENV if html else _TEXT_ENV
    label = f"{part} line {line}" if part else f"line {line}"
    expressions = [match.strip() for match in _EXPRESSION.findall(text)]
    culprit = None
    for expression in expressions:
        try:
            result = env.compile_expression(expression, undefined_to_none=False)(**scope)
            if isinstance(exc, UndefinedError) and isinstance(result, Undefined):
                culprit = expression
                break
        except type(exc):
            culprit = expression
            break
        except Exception:  # another problem: not this expression
            continue
    if culprit is None:
        shown = text.strip()
        return f"; at {label}: {shown[:120]}" if shown else f"; at {label}"
    values = []
    for name in _paths(culprit, env):
        while name:  # item.price undefined: show item
            try:
                value = env.compile_expression(name, undefined_to_none=False)(**scope)
            except Exception:  # not evaluable alone: nothing to show
                value = _NOTHING
                break
            if not isinstance(value, Undefined):
                break
            name = name.rpartition(".")[0]
        if name and value is not _NOTHING and not callable(value):
            values.append(f"{name} = {_shown(value)}")
    with_values = f" with {', '.join(values)}" if values else ""
    return f"; at {label}: {{{{ {culprit} }}}}{with_values}"


def render_part(source: str | None, variables: dict[str, Any], html: bool = False,
                part: str | None = None, *, link_marks: bool = False) -> str | None:
    """Render one part (subject, HTML body, text body or SMS text); ``part`` names it in
    errors. ``link_marks``: keep the marks of ``tracked`` links (the e-mail text part,
    which tracking rewrites); otherwise they are removed."""
    if source is None:
        return None
    try:
        result = _compile(source, html).render(variables)
    except UndefinedError as exc:
        raise RenderError(f"missing variable: {exc.message}"
                          f"{_where(source, html, part, exc)}") from None
    except SecurityError as exc:
        raise RenderError(f"not allowed in a template: {exc}"
                          f"{_where(source, html, part, exc)}") from None
    except TemplateError as exc:
        line = getattr(exc, "lineno", None)
        where = f" (line {line})" if line else ""
        raise RenderError(f"template error: {exc.message or exc}{where}") from None
    except (TypeError, ValueError, ArithmeticError, LookupError, AttributeError) as exc:
        raise RenderError(f"template error: {type(exc).__name__}: {exc}"
                          f"{_where(source, html, part, exc)}") from None
    if len(result) > MAX_RENDERED_CHARS:
        raise RenderError(f"rendered message is larger than {MAX_RENDERED_CHARS} characters")
    return result if link_marks else strip_marks(result)


def template_event(row: dict[str, Any], event_id: int) -> dict[str, Any]:
    """The event as templates see it (``{{ event.externalId }}`` or ``{{ ctx.x }}``).

    Field names are the push API's (camelCase); the storage names (snake_case) are
    accepted too, so a template written either way renders.
    """
    fields = {
        "id": to_public(event_id),
        "type": row["type"],
        "email": row["email"],
        "mobilePhone": row["mobile_phone"],
        "wishedChannel": row["wished_channel"],
        "externalId": row["external_id"],
        "language": row["language"],
        "country": row["country"],
        "origin": row["origin"],
        "scheduled": row["scheduled"],
        "expiration": row["expiration"],
        "created": row["created"],
    }
    fields.update(mobile_phone=row["mobile_phone"], wished_channel=row["wished_channel"],
                  external_id=row["external_id"])
    return {**fields, "ctx": row["ctx"] or {}}


def event_variables(event: dict[str, Any]) -> dict[str, Any]:
    """The variables a template sees: the event's ``ctx`` keys, plus ``event`` (its fields)
    and ``ctx`` itself, like ACC's ``<%= rtEvent.ctx.@... %>``."""
    ctx = event.get("ctx") or {}
    fields = {key: value for key, value in event.items() if key != "ctx"}
    return {**ctx, "ctx": ctx, "event": fields}


def render_message(subject: str | None, html_body: str | None, text_body: str | None,
                   variables: dict[str, Any], *, text_link_marks: bool = False
                   ) -> RenderedMessage:
    """``text_link_marks``: the text part keeps the marks of its ``tracked`` links."""
    return RenderedMessage(
        subject=render_part(subject, variables, part="subject"),
        html=render_part(html_body, variables, html=True, part="html"),
        text=render_part(text_body, variables, part="text", link_marks=text_link_marks),
    )
