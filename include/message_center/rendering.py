"""Renders message templates from an event: Jinja2 in a sandbox, strict about variables.

One renderer serves delivery, template validation, previews and proofs, so what a
proof shows is exactly what recipients get. A template error or a missing variable
raises :class:`RenderError` with a readable reason; the caller fails that one message.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from message_center.ids import to_public

MAX_RENDERED_CHARS = 1_000_000


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
    return env


_TEXT_ENV = _environment(autoescape=False)
_HTML_ENV = _environment(autoescape=True)


@lru_cache(maxsize=512)
def _compile(source: str, html: bool) -> Any:
    env = _HTML_ENV if html else _TEXT_ENV
    return env.from_string(source)


def check_syntax(source: str, html: bool = False) -> None:
    """Raise RenderError (with the line) when ``source`` is not a valid template."""
    try:
        _compile(source, html)
    except TemplateError as exc:
        line = getattr(exc, "lineno", None)
        raise RenderError(f"{exc.message or exc}" + (f" (line {line})" if line else "")) from None


def render_part(source: str | None, variables: dict[str, Any], html: bool = False) -> str | None:
    """Render one part (subject, HTML body, text body or SMS text)."""
    if source is None:
        return None
    try:
        result = _compile(source, html).render(variables)
    except UndefinedError as exc:
        raise RenderError(f"missing variable: {exc.message}") from None
    except SecurityError as exc:
        raise RenderError(f"not allowed in a template: {exc}") from None
    except TemplateError as exc:
        line = getattr(exc, "lineno", None)
        where = f" (line {line})" if line else ""
        raise RenderError(f"template error: {exc.message or exc}{where}") from None
    except (TypeError, ValueError, ArithmeticError, LookupError, AttributeError) as exc:
        raise RenderError(f"template error: {type(exc).__name__}: {exc}") from None
    if len(result) > MAX_RENDERED_CHARS:
        raise RenderError(f"rendered message is larger than {MAX_RENDERED_CHARS} characters")
    return result


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
                   variables: dict[str, Any]) -> RenderedMessage:
    return RenderedMessage(
        subject=render_part(subject, variables),
        html=render_part(html_body, variables, html=True),
        text=render_part(text_body, variables),
    )
