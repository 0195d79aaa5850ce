"""Storing validated events with an optional ``Idempotency-Key``: the one write path of every
push protocol (the JSON push API, ACC's SOAP ``PushEvent``/``PushEvents``, the Campaign REST
transactional API).

Each protocol parses and validates its own wire format into ``events.EventIn`` (with the
rules of ``message_center.events``), then calls ``store_events``; only the answer differs,
so it is built by the caller from the new ids and kept as JSON for idempotent replays.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Engine

from message_center import events
from message_center.events import EventIn


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
) -> tuple[int, Any, bool]:
    """Queue ``(kind, event)`` pairs all or nothing, in one transaction.

    Returns ``(status, body, replayed)``: ``answer(ids)`` (ids in the order of ``items``)
    with status 201, or what the first request with the same ``key`` answered. ``endpoint``
    and ``request`` (JSON-like content) identify the request for the key; the same key with
    another endpoint or content raises ``IdempotencyConflict``.
    """
    with engine.begin() as conn:
        if key is not None:
            hash_ = events.request_hash(endpoint, request)
            stored = events.claim_idempotency_key(conn, key, endpoint, hash_)
            if stored is not None:
                if (stored.endpoint, stored.request_hash) != (endpoint, hash_):
                    raise IdempotencyConflict()
                return stored.status_code, stored.body, True
        body = answer(_insert(conn, items))
        if key is not None:
            events.store_idempotent_response(conn, key, 201, body)
    return 201, body, False


def _insert(conn: Any, items: Sequence[tuple[str, EventIn]]) -> list[int]:
    kinds = {kind for kind, _ in items}
    if len(kinds) == 1:
        (kind,) = kinds
        return events.insert_events(conn, kind, [event for _, event in items])
    ids: list[int] = [0] * len(items)
    for kind in sorted(kinds):
        positions = [i for i, (k, _) in enumerate(items) if k == kind]
        for position, new_id in zip(positions, events.insert_events(
                conn, kind, [items[i][1] for i in positions]), strict=True):
            ids[position] = new_id
    return ids
