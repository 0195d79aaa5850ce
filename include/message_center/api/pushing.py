"""Storing validated events with an optional ``Idempotency-Key``: the one write path of every
push protocol (the JSON push API, ACC's SOAP ``PushEvent``/``PushEvents``, the Campaign REST
transactional API).

Each protocol parses and validates its own wire format into ``events.EventIn`` (with the
rules of ``message_center.events``), then calls ``store_events``; only the answer differs,
so it is built by the caller from the new ids and kept as JSON for idempotent replays.

``store_events`` also checks each event's ``ctx`` against the fields declared by the
template published for its type and channel (``templates.ctx_schema``; the declarations
are read through ``publishing.schema_cache``, a few seconds old at most): an event that
does not fit is refused with ``EventValidationError`` naming the field, and nothing is
stored. Values are normalised on the way (``"42.00"`` where a number is declared is stored
as ``42.0``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Engine

from message_center import events
from message_center.events import EncodedCtx, EventIn, EventValidationError, compact_json
from message_center.publishing import PublishedSchemas, schema_cache
from message_center.templates.ctx_schema import compile_check


class IdempotencyConflict(Exception):
    """The key was already used for a different request (another body or endpoint)."""

    def __init__(self) -> None:
        super().__init__("Idempotency-Key was already used for a different request")


def store_events(
    engine: Engine,
    items: Sequence[tuple[str, EventIn]],
    *,
    answer: Callable[[list[int]], Any],
    key: str | None = None,
    endpoint: str = "",
    request: Any = None,
    indexed: bool = False,
    sandbox: bool = False,
) -> tuple[int, Any, bool]:
    """Queue ``(kind, event)`` pairs all or nothing, in one transaction.

    Returns ``(status, body, replayed)``: ``answer(ids)`` (ids in the order of ``items``)
    with status 201, or what the first request with the same ``key`` answered. ``endpoint``
    and ``request`` (JSON-like content) identify the request for the key; the same key with
    another endpoint or content raises ``IdempotencyConflict``. An event whose ctx does not
    fit its published template raises ``EventValidationError`` (errors carry the event's
    ``index`` and an ``events[i].`` field when ``indexed``, as a batch reports them).
    A replayed key answers as the first time, whatever was published since.
    ``sandbox``: the events are sandbox events (a sandbox user pushed them), decided here
    once (:mod:`message_center.delivery.sandbox`).
    """
    with engine.begin() as conn:
        if key is not None:
            hash_ = events.request_hash(endpoint, request)
            stored = events.claim_idempotency_key(conn, key, endpoint, hash_)
            if stored is not None:
                if (stored.endpoint, stored.request_hash) != (endpoint, hash_):
                    raise IdempotencyConflict()
                return stored.status_code, stored.body, True
        items = fit_ctx(schema_cache.get(str(engine.url), conn), items, indexed=indexed)
        body = answer(_insert(conn, items, sandbox))
        if key is not None:
            events.store_idempotent_response(conn, key, 201, body)
    return 201, body, False


def _insert(conn: Any, items: Sequence[tuple[str, EventIn]], sandbox: bool) -> list[int]:
    kinds = {kind for kind, _ in items}
    if len(kinds) == 1:
        (kind,) = kinds
        return events.insert_events(conn, kind, [event for _, event in items],
                                    sandbox=sandbox)
    ids: list[int] = [0] * len(items)
    for kind in sorted(kinds):
        positions = [i for i, (k, _) in enumerate(items) if k == kind]
        for position, new_id in zip(positions, events.insert_events(
                conn, kind, [items[i][1] for i in positions], sandbox=sandbox), strict=True):
            ids[position] = new_id
    return ids


def fit_ctx(schemas: PublishedSchemas, items: Sequence[tuple[str, EventIn]], *,
            indexed: bool = False) -> Sequence[tuple[str, EventIn]]:
    """``items`` with each ctx checked against (and normalised by) the declaration of the
    template published for its event; raises ``EventValidationError`` naming every field
    that does not fit."""
    if not schemas.any_declared:
        return items
    fitted = list(items)
    errors: list[dict[str, Any]] = []
    checks: dict[str, Any] = {}
    for index, (kind, event) in enumerate(items):
        published = schemas.for_event(event.type, event.wished_channel, event.language)
        if published is None or not published.schema:
            continue
        check = checks.get(published.template)
        if check is None:
            check = checks[published.template] = compile_check(published.schema,
                                                               published.template)
        normalised, problems = check(event.ctx)
        for field, message in problems:
            path = field.split(".")
            if indexed:
                errors.append({"loc": ["body", "events", index, *path],
                               "field": f"events[{index}].{field}", "msg": message,
                               "type": "ctx_template", "index": index})
            else:
                errors.append({"loc": ["body", *path], "field": field, "msg": message,
                               "type": "ctx_template"})
        if normalised is not None and not problems:
            fitted[index] = (kind, event.model_copy(update={
                "ctx": EncodedCtx(normalised, compact_json(normalised))}))
    if errors:
        raise EventValidationError(errors)
    return fitted
