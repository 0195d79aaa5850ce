"""Event recycling on the event lookup page, through the real API server: the first
event links to the one made from it, that one links back, and an event that could not be
recycled says why."""

from __future__ import annotations

import httpx
import pytest
from processing_factory import insert_events
from sqlalchemy import text

from message_center.ids import to_public

pytestmark = pytest.mark.server

UI = "/message-center/ui"


def test_the_event_page_links_recycled_events(airflow_stack, execution_db):
    first, fallback, lonely = insert_events(execution_db, "batch", 3, notify=False)
    with execution_db.begin() as conn:
        conn.execute(text("UPDATE batch_event SET recycled_from = :first WHERE id = :id"),
                     {"first": first, "id": fallback})
        conn.execute(text("""
            INSERT INTO event_recycling (event_kind, event_id, recycled_id, channel, outcome,
                                         reason)
            VALUES ('batch', :first, :fallback, 'email', 'hard', NULL),
                   ('batch', :lonely, NULL, 'email', 'hard',
                    'not recycled: no email address on the event')"""),
            {"first": first, "fallback": fallback, "lonely": lonely})
    # the first page the server renders after start-up is slow on a loaded machine
    with httpx.Client(base_url=airflow_stack.base_url, timeout=180) as client:
        client.cookies.set("_token", airflow_stack.token(airflow_stack.viewer_user))
        page = client.get(f"{UI}/events/{to_public(first)}")
        assert page.status_code == 200
        assert (f'id="recycled-to"><a href="{UI}/events/{to_public(fallback)}"'
                in page.text), page.text
        back = client.get(f"{UI}/events/{to_public(fallback)}").text
        assert f'id="recycled-from"><a href="{UI}/events/{to_public(first)}"' in back
        alone = client.get(f"{UI}/events/{to_public(lonely)}").text
        assert 'id="recycling">not recycled: no email address on the event' in alone
