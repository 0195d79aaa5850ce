"""The ``ctx`` a template declares: which fields it needs and their types.

A template file may say what its event context must hold::

    ctx:
      firstName: string
      total: number
      currency: string?      # ? = optional
      items: list?

Types: ``string``, ``number``, ``integer``, ``boolean``, ``list``, ``object``, ``any``; a
trailing ``?`` makes the field optional (absent or ``null``). Fields the template does not
declare may still be sent (they are stored, and simply not checked). The declaration is
written by the template's author, not derived from the seeds: seeds are examples, and a
field missing from every seed would otherwise pass unchecked. Load time checks that each
seed fits the declaration and that the template uses no variable it does not declare.

The declaration is published with the template version, and the push API checks every
event's ``ctx`` against the template published for its type and channel
(:func:`check_ctx`): a missing or mistyped field is refused with a ``422`` naming it.
Values are normalised where the intent is clear, since XML (ACC's SOAP) and many clients
send every value as text: a numeric string where a number is declared becomes that number
(``"42.00"`` -> ``42.0``), ``"true"``/``"false"`` where a boolean is declared become the
boolean, and a number where a string is declared becomes its text.

This module is plain Python (no database, no Jinja): the template loader and the push path
both use it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

TYPES = ("string", "number", "integer", "boolean", "list", "object", "any")
"""The types a ``ctx`` field may declare."""

_DESCRIPTION = {"string": "text", "number": "a number", "integer": "a whole number",
                "boolean": "true or false", "list": "a list", "object": "an object",
                "any": "a value"}
_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")
_NUMBER = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")
_INTEGER = re.compile(r"^[+-]?\d+$")
_MAX_SHOWN = 60

CtxSchema = dict[str, dict[str, Any]]
"""``{field: {"type": ..., "required": bool}}``, as published (JSON)."""


def parse_declaration(raw: Any) -> tuple[CtxSchema, list[tuple[str | None, str]]]:
    """A template file's ``ctx:`` mapping as a schema; problems are ``(field, reason)``."""
    if not isinstance(raw, Mapping) or not raw:
        return {}, [(None, "must be a mapping of field names to types, e.g. "
                           "{firstName: string, total: number, currency: string?}")]
    schema: CtxSchema = {}
    problems: list[tuple[str | None, str]] = []
    for name, spec in raw.items():
        if not isinstance(name, str) or not _FIELD_NAME.match(name):
            problems.append((str(name), "a ctx field name must be letters, digits and _, "
                                        "not starting with a digit (a template variable)"))
            continue
        if not isinstance(spec, str):
            problems.append((name, f"must be a type ({', '.join(TYPES)}), with ? when "
                                   f"optional; got {spec!r}"))
            continue
        kind = spec.strip()
        required = not kind.endswith("?")
        kind = kind.rstrip("?").strip()
        if kind not in TYPES:
            problems.append((name, f"unknown type {spec!r} (expected one of "
                                   f"{', '.join(TYPES)}, with ? when optional)"))
            continue
        schema[name] = {"type": kind, "required": required}
    return schema, problems


def describe(spec: Mapping[str, Any]) -> str:
    return _DESCRIPTION.get(spec.get("type", "any"), "a value")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN - 3] + "..."


_MISSING = object()


def _fit(kind: str, value: Any) -> Any:
    """``value`` as ``kind`` (normalised), or ``_MISSING`` when it does not fit."""
    if kind == "any":
        return value
    if kind == "string":
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        return _MISSING
    if kind in ("number", "integer"):
        if isinstance(value, bool):
            return _MISSING
        if isinstance(value, str):
            text = value.strip()
            if kind == "integer" and _INTEGER.match(text):
                return int(text)
            if kind == "number" and _NUMBER.match(text):
                if _INTEGER.match(text):
                    return int(text)
                number = float(text)
                return number if math.isfinite(number) else _MISSING
            return _MISSING
        if kind == "integer":
            if isinstance(value, int):
                return value
            return int(value) if isinstance(value, float) and value.is_integer() else _MISSING
        return value if isinstance(value, int | float) else _MISSING
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        return _MISSING
    if kind == "list":
        return value if isinstance(value, list) else _MISSING
    if kind == "object":
        return value if isinstance(value, dict) else _MISSING
    return _MISSING


_PLAIN_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "number": (int, float), "integer": (int,), "boolean": (bool,),
    "list": (list,), "object": (dict,)}


def compile_check(schema: Mapping[str, Mapping[str, Any]], template: str) -> Any:
    """:func:`check_ctx` for one schema, with a fast path for the common case (every value
    already of its declared type: nothing to normalise, nothing to report). The push path
    checks up to 1,000 events per request with it."""
    fields = [(name, _PLAIN_TYPES.get(spec.get("type", "any")), bool(spec.get("required", True)))
              for name, spec in schema.items()]

    def check(ctx: Mapping[str, Any]) -> tuple[dict[str, Any] | None, list[tuple[str, str]]]:
        for name, types, required in fields:
            value = ctx.get(name)
            if value is None:
                if required:
                    break
                continue
            if types is not None and type(value) not in types:
                break
        else:
            return None, []
        return check_ctx(schema, ctx, template)

    return check


def check_ctx(schema: Mapping[str, Mapping[str, Any]], ctx: Mapping[str, Any],
              template: str) -> tuple[dict[str, Any] | None, list[tuple[str, str]]]:
    """Check ``ctx`` against ``schema`` (the declaration of ``template``, e.g.
    ``orderConfirmed v2``). Returns ``(normalised, problems)``: ``normalised`` is the ctx
    with values converted (``None`` when nothing changed); ``problems`` are
    ``(field, message)`` with the field as ``ctx.<name>``."""
    problems: list[tuple[str, str]] = []
    changed: dict[str, Any] | None = None
    for name, spec in schema.items():
        kind = spec.get("type", "any")
        value = ctx.get(name)
        if value is None:
            if spec.get("required", True):
                what = "is missing" if name not in ctx else "is null"
                problems.append((f"ctx.{name}", f"ctx.{name} {what}: template {template} "
                                                f"needs it ({describe(spec)})"))
            continue
        fitted = _fit(kind, value)
        if fitted is _MISSING:
            problems.append((f"ctx.{name}", f"ctx.{name} must be {describe(spec)} for "
                                            f"template {template}; got {_shown(value)}"))
        elif fitted is not value:
            if changed is None:
                changed = dict(ctx)
            changed[name] = fitted
    return changed, problems
