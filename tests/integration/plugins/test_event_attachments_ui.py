"""Files an event brought on the event lookup page, through the real API server: listed
with name, type, size and hash, downloaded by a user with read rights (the bytes as
pushed), refused without a login."""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest
from processing_factory import insert_events
from sqlalchemy import text

from message_center.ids import to_public

pytestmark = pytest.mark.server

UI = "/message-center/ui"
PDF = b"%PDF-1.4\n% the event's own file\n"


def test_the_event_page_lists_and_serves_the_events_files(airflow_stack, execution_db):
    [event_id] = insert_events(execution_db, "batch", 1, notify=False)
    meta = [{"name": "ticket.pdf", "contentType": "application/pdf", "size": len(PDF),
             "sha256": hashlib.sha256(PDF).hexdigest()}]
    with execution_db.begin() as conn:
        conn.execute(text("UPDATE batch_event SET attachments = CAST(:m AS jsonb) "
                          "WHERE id = :id"), {"m": json.dumps(meta), "id": event_id})
        conn.execute(text("INSERT INTO event_attachment VALUES ('batch', :id, 0, :c)"),
                     {"id": event_id, "c": PDF})
    public = to_public(event_id)
    with httpx.Client(base_url=airflow_stack.base_url, timeout=180) as client:
        anonymous = client.get(f"{UI}/events/{public}/attachments/0")
        assert anonymous.status_code in (303, 401, 403) and PDF not in anonymous.content
        client.cookies.set("_token", airflow_stack.token(airflow_stack.viewer_user))
        page = client.get(f"{UI}/events/{public}").text
        assert 'id="event-attachments"' in page, page
        assert f'href="{UI}/events/{public}/attachments/0"' in page
        assert meta[0]["sha256"][:16] in page
        download = client.get(f"{UI}/events/{public}/attachments/0")
        assert download.status_code == 200 and download.content == PDF
        assert "nosniff" in download.headers["x-content-type-options"]
        assert client.get(f"{UI}/events/{public}/attachments/1").status_code == 404
