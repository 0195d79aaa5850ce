"""Attachments given by the event, end to end on the real parts: a template that takes
files from the event is published to the real execution database; events are pushed
through the push API app (FastAPI TestClient, real PostgreSQL); the real processing
delivers them to the real SMTP sink; URL files come from a real HTTP server on loopback.

Refused at push time with a 422 naming the field and nothing stored: an executable, a
type that does not match the content, a template that takes no files, an unlisted host
(loopback without ``MC_ATTACHMENT_ALLOWED_HOSTS``). Refused at sending time, the event
failing with a reason naming the attachment: a redirect (to another host), a body past
the template's per-file limit while streaming; an HTTP error is retried like a soft
delivery error."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi import FastAPI, HTTPException, Request
from fastapi.testclient import TestClient
from sqlalchemy import text
from template_factory import publish, write

from message_center.api import Authorization, HealthThresholds, create_app
from message_center.delivery.channels import Channels
from message_center.delivery.smtp import SmtpSettings
from message_center.ids import to_stored
from message_center.processing import ProcessingSettings, deliver_shard, split_queue
from message_center.status_sync import sync_event_statuses

TICKET = b"%PDF-1.4\n% boarding pass of the event\n" + bytes(range(256)) * 4
FROM_URL = b"%PDF-1.7\n% fetched from the allow-listed server\n"
LIMIT = 5000  # the template's per-file limit: the "too big" body needs only 6 KB
TEMPLATE = f"""\
internal_name: boardingPass
label: Boarding pass
event_type: BOARDING
channel: email
sender: "Air <fly@air.example>"
subject: "Flight {{{{ flight }}}}"
text: "Have a good flight, {{{{ firstName }}}}."
attachments:
  from_event:
    max_files: 2
    max_file_bytes: {LIMIT}
    types: [application/pdf, text/plain]
seeds:
  - address: seed@example.com
    ctx: {{firstName: Sam, flight: AF1}}
"""
NO_FILES = """\
internal_name: plainNotice
label: Notice
event_type: NOTICE
channel: email
subject: "Order"
text: "Thanks."
seeds:
  - address: seed@example.com
    ctx: {}
"""
SETTINGS = ProcessingSettings(shards=1, delivery_chunk=20)


class _Reader:
    def check(self, kind: str) -> None:
        if kind not in ("rt", "batch"):
            raise HTTPException(403, "Forbidden")


def _read(request: Request) -> _Reader:
    if request.headers.get("X-No-Read"):
        raise HTTPException(403, "Forbidden: reading events needs read:rt or read:batch")
    return _Reader()


RIGHTS = Authorization(push=lambda kind: (lambda: None), read=_read,
                       check_push=lambda user, kind: None)


@pytest.fixture
def client(execution_db, test_deployment) -> TestClient:
    url = test_deployment.database_url("execution")
    root = FastAPI()
    root.mount("/message-center", create_app(lambda: "tester", lambda: url,
                                             authorization=RIGHTS,
                                             thresholds=HealthThresholds(100, 400)))
    return TestClient(root, base_url="http://testserver/message-center/v1")


class _Files(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/ticket.pdf":
            self._answer(200, FROM_URL)
        elif self.path == "/moved.pdf":  # a redirect to another host: never followed
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.end_headers()
        elif self.path == "/big.pdf":  # no Content-Length: only the stream limit stops it
            self.send_response(200)
            self.send_header("Content-Type", "application/pdf")
            self.end_headers()
            self.wfile.write(b"%PDF-1.4\n")
            for _ in range(6):
                self.wfile.write(b"x" * 1024)
        else:
            self._answer(500, b"server error")

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def file_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _event(files: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"type": "BOARDING", "email": "ada@example.com",
            "ctx": {"firstName": "Ada", "flight": "AF7"}, "attachments": files, **extra}


def _deliver(execution_db, smtp_port: int) -> None:
    with Channels(SmtpSettings(port=smtp_port), None, kind="rt") as chans:
        for claim in split_queue(execution_db, "rt", SETTINGS):
            deliver_shard(execution_db, claim, SETTINGS, chans, copy_status=True)
    sync_event_statuses(execution_db)


def _stored(execution_db) -> tuple[int, int]:
    with execution_db.connect() as conn:
        return (conn.execute(text("SELECT count(*) FROM rt_event")).scalar_one(),
                conn.execute(text("SELECT count(*) FROM event_attachment")).scalar_one())


def test_event_files_reach_the_recipient_and_are_listed_and_downloadable(
        client, execution_db, urls, template_dir, smtp_sink, test_deployment, file_server,
        monkeypatch):
    monkeypatch.setenv("MC_ATTACHMENT_ALLOWED_HOSTS", file_server.removeprefix("http://"))
    write(template_dir, "boarding.yaml", TEMPLATE)
    assert publish(urls, template_dir).errors == {}

    pushed = client.post("/rtEvents", json=_event([
        {"name": "boarding-AF7.pdf", "contentType": "application/pdf", "content": _b64(TICKET)},
        {"name": "terms.pdf", "url": f"{file_server}/ticket.pdf"}]))
    assert pushed.status_code == 201, pushed.text
    event_id = pushed.json()["id"]

    _deliver(execution_db, test_deployment.smtp_port)

    found = client.get(f"/events/{event_id}").json()
    assert found["status"] == "sent", found
    [message] = [m for m in smtp_sink.messages() if str(m["To"]) == "ada@example.com"]
    files = {part.get_filename(): part.get_content() for part in message.iter_attachments()}
    assert files == {"boarding-AF7.pdf": TICKET, "terms.pdf": FROM_URL}  # identical bytes

    assert found["attachments"] == [
        {"name": "boarding-AF7.pdf", "contentType": "application/pdf", "size": len(TICKET),
         "sha256": hashlib.sha256(TICKET).hexdigest(),
         "download": f"/events/{event_id}/attachments/0"},
        {"name": "terms.pdf", "contentType": "application/pdf",
         "url": f"{file_server}/ticket.pdf", "download": None}]
    download = client.get(f"/events/{event_id}/attachments/0")
    assert download.status_code == 200 and download.content == TICKET
    assert download.headers["content-type"] == "application/pdf"
    assert 'filename="boarding-AF7.pdf"' in download.headers["content-disposition"]
    assert client.get(f"/events/{event_id}/attachments/0",
                      headers={"X-No-Read": "1"}).status_code == 403
    assert client.get(f"/events/{event_id}/attachments/5").status_code == 404
    # stored once: one row of bytes, whatever the retries and the archive do
    with execution_db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM event_attachment WHERE event_id = :id"),
                            {"id": to_stored(event_id)}).scalar_one() == 1

    # A bulk replay ("send it again") sends the same files: the bytes go with the new event.
    from message_center.operations import actions

    request = actions.parse_request({"action": "replay", "filter": {"ids": [event_id]}},
                                    user="ops")
    assert actions.run_action(execution_db, "manual__replay-files", request,
                              expected_count=1).done == 1
    _deliver(execution_db, test_deployment.smtp_port)
    again = [m for m in smtp_sink.messages() if str(m["To"]) == "ada@example.com"]
    assert len(again) == 2
    assert {p.get_filename(): p.get_content() for p in again[1].iter_attachments()} == files


@pytest.mark.parametrize(("files", "field", "words"), [
    ([{"name": "setup.exe", "contentType": "application/pdf", "content": _b64(b"MZ\x90")}],
     "attachments[0].content", "*.exe are refused"),
    ([{"name": "a.pdf", "content": _b64(TICKET)},
      {"name": "b.pdf", "contentType": "application/pdf",
       "content": _b64(b"MZ\x90\x00" + b"\x00" * 64)}],
     "attachments[1].content", "executable"),
    ([{"name": "photo.png", "contentType": "image/png", "content": _b64(TICKET)}],
     "attachments[0].content", "not image/png"),
    ([{"name": "a.pdf", "content": "not base64!"}], "attachments[0].content", "base64"),
    ([{"name": "big.pdf", "content": _b64(b"%PDF-1.4\n" + b"x" * LIMIT)}],
     "attachments[0].content", f"{LIMIT} bytes the template allows"),
    ([{"name": "note.csv", "content": _b64(b"a,b\n")}], "attachments[0].contentType",
     "not a type the template takes"),
    ([{"name": "a.pdf", "url": "http://127.0.0.1:9/a.pdf"}], "attachments[0].url",
     "MC_ATTACHMENT_ALLOWED_HOSTS"),
])
def test_a_bad_file_is_422_naming_the_field_and_nothing_is_stored(
        client, execution_db, urls, template_dir, monkeypatch, files, field, words):
    monkeypatch.delenv("MC_ATTACHMENT_ALLOWED_HOSTS", raising=False)
    write(template_dir, "boarding.yaml", TEMPLATE)
    assert publish(urls, template_dir).errors == {}

    answer = client.post("/rtEvents", json=_event(files))

    assert answer.status_code == 422, answer.text
    [error] = answer.json()["detail"]
    assert error["field"] == field and words in error["msg"], error
    assert _stored(execution_db) == (0, 0)


def test_a_template_without_from_event_takes_no_files(client, execution_db, urls,
                                                      template_dir):
    write(template_dir, "notice.yaml", NO_FILES)
    assert publish(urls, template_dir).errors == {}
    answer = client.post("/batchEvents", json={"events": [
        {"type": "NOTICE", "email": "a@example.com"},
        {"type": "NOTICE", "email": "b@example.com",
         "attachments": [{"name": "a.pdf", "content": _b64(TICKET)}]}]})
    assert answer.status_code == 422
    [error] = answer.json()["detail"]
    assert error["field"] == "events[1].attachments"
    assert "does not take attachments from the event" in error["msg"]
    assert _stored(execution_db) == (0, 0)


def test_url_files_refused_at_sending_time_fail_the_event_naming_the_file(
        client, execution_db, urls, template_dir, smtp_sink, test_deployment, file_server,
        monkeypatch):
    monkeypatch.setenv("MC_ATTACHMENT_ALLOWED_HOSTS", file_server.removeprefix("http://"))
    write(template_dir, "boarding.yaml", TEMPLATE)
    assert publish(urls, template_dir).errors == {}
    ids = {}
    for path in ("moved.pdf", "big.pdf", "broken.pdf"):
        answer = client.post("/rtEvents", json=_event(
            [{"name": path, "url": f"{file_server}/{path}"}], email=f"{path}@example.com"))
        assert answer.status_code == 201, answer.text
        ids[path] = answer.json()["id"]

    _deliver(execution_db, test_deployment.smtp_port)

    def outcome(name: str) -> tuple[str, str]:
        found = client.get(f"/events/{ids[name]}").json()
        return found["delivery"]["status"], found["delivery"]["error"]

    status, error = outcome("moved.pdf")
    assert status == "failed" and "attachments[0] (moved.pdf)" in error
    assert "redirects are not followed" in error
    status, error = outcome("big.pdf")
    assert status == "failed" and f"more than the {LIMIT} bytes allowed" in error
    status, error = outcome("broken.pdf")  # retried like a soft error, naming the file
    assert status == "retry" and "attachments[0] (broken.pdf)" in error and "500" in error
    found = client.get(f"/events/{ids['broken.pdf']}").json()
    assert found["delivery"]["failureReason"] == "attachment_unavailable"
    assert not [m for m in smtp_sink.messages() if "pdf@" in str(m["To"])]


def test_a_body_past_the_event_limit_is_read_only_when_it_carries_attachments(
        client, execution_db, urls, template_dir):
    write(template_dir, "boarding.yaml", TEMPLATE)
    assert publish(urls, template_dir).errors == {}
    big = _b64(b"%PDF-1.4\n" + bytes(300 * 1024))  # past the 256 KiB of an event body

    without = client.post("/rtEvents", content=json.dumps(
        {"type": "BOARDING", "email": "a@example.com", "ctx": {"pad": big}}))
    with_files = client.post("/rtEvents", json=_event([{"name": "a.pdf", "content": big}]))

    assert without.status_code == 413 and "when it carries attachments" in without.text
    assert with_files.status_code == 422  # read and validated: the template's limit
    assert with_files.json()["detail"][0]["field"] == "attachments[0].content"
    assert _stored(execution_db) == (0, 0)

