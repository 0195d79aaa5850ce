"""E-mail attachments made for real: a PDF rendered by WeasyPrint and read back with
pypdf, an invitation made with icalendar and parsed back, static files checked against
their declared type, executables refused, limits enforced, and the MIME message parsed by
Python's e-mail parser."""

from __future__ import annotations

import io
from email import message_from_bytes, policy

import pytest
from icalendar import Calendar
from pypdf import PdfReader

from message_center.channels import email_attachments as att
from message_center.delivery.smtp import build_email
from message_center.rendering import RenderError

pytestmark = pytest.mark.fast  # no database, no server: `make test-fast`

PDF_MAGIC = b"%PDF-1.4\n%fake but typed\n"
VARIABLES = {"orderId": "A-17", "total": "42.00", "hotel": "Grand Hotel",
             "checkIn": "2026-05-01T15:00:00Z", "checkOut": "2026-05-03",
             "ctx": {}, "event": {}}


def declaration(tmp_path, items, **extra):
    declared, problems = att.parse_declaration(
        {"files": items, **extra} if extra else items, tmp_path)
    assert problems == []
    return declared


def test_a_generated_pdf_is_an_invoice_with_its_text(tmp_path):
    declared = declaration(tmp_path, [{
        "name": "invoice-{{ orderId }}.pdf",
        "pdf": "<h1>Invoice {{ orderId }}</h1><p>Total: {{ total }} EUR</p>"}])
    [pdf] = att.render_attachments(declared, VARIABLES, uid="u1")
    assert (pdf.name, pdf.content_type) == ("invoice-A-17.pdf", "application/pdf")
    reader = PdfReader(io.BytesIO(pdf.data))
    assert len(reader.pages) == 1
    text = reader.pages[0].extract_text()
    assert "Invoice A-17" in text and "Total: 42.00 EUR" in text


def test_a_pdf_never_fetches_urls(tmp_path):
    for url in ("http://169.254.169.254/latest/meta-data/", "file:///etc/passwd"):
        with pytest.raises(ValueError, match="disallowed protocol"):
            att.no_network_fetcher().fetch(url)
    declared = declaration(tmp_path, [{
        "name": "x.pdf", "pdf": '<img src="file:///etc/passwd"><p>still made</p>'}])
    [pdf] = att.render_attachments(declared, VARIABLES, uid="u")
    assert "still made" in PdfReader(io.BytesIO(pdf.data)).pages[0].extract_text()


def test_an_invitation_parses_back_with_icalendar(tmp_path):
    declared = declaration(tmp_path, [{
        "name": "booking.ics",
        "ical": {"summary": "Stay at {{ hotel }}", "start": "{{ checkIn }}",
                 "end": "{{ checkOut }}", "location": "1 Main St",
                 "organizer": "bookings@hotel.example"}}])
    [ics] = att.render_attachments(declared, VARIABLES, uid="mc-rt-1@x",
                                   recipient="ann@example.com")
    assert ics.content_type == "text/calendar" and ics.alternative
    calendar = Calendar.from_ical(ics.data)
    assert str(calendar["method"]) == "REQUEST"
    [event] = calendar.walk("VEVENT")
    assert str(event["summary"]) == "Stay at Grand Hotel"
    assert event.decoded("dtstart").isoformat() == "2026-05-01T15:00:00+00:00"
    assert event.decoded("dtend").isoformat() == "2026-05-03"
    assert str(event["uid"]) == "mc-rt-1@x-0"
    assert str(event["attendee"]) == "mailto:ann@example.com"
    with pytest.raises(RenderError, match=r"attachments\[0\]\.ical\.start: 'soon'"):
        att.render_attachments(declared, {**VARIABLES, "checkIn": "soon"}, uid="u")


def test_static_files_are_kept_with_their_hash_and_checked(tmp_path):
    (tmp_path / "terms.pdf").write_bytes(PDF_MAGIC)
    declared = declaration(tmp_path, [{"file": "terms.pdf"}])
    [item] = declared["files"]
    assert (item["name"], item["content_type"], item["size"]) == (
        "terms.pdf", "application/pdf", len(PDF_MAGIC))
    [made] = att.render_attachments(declared, VARIABLES, uid="u")
    assert made.data == PDF_MAGIC and made.sha256 == item["sha256"]

    (tmp_path / "setup.exe").write_bytes(b"MZ\x90\x00")
    (tmp_path / "fake.pdf").write_bytes(b"MZ\x90\x00 an executable")
    (tmp_path / "page.png").write_bytes(b"not a png")
    (tmp_path / "run.txt").write_bytes(b"#!/bin/sh\nrm -rf /\n")
    _, problems = att.parse_declaration(
        [{"file": "setup.exe"}, {"file": "fake.pdf"}, {"file": "page.png"},
         {"file": "run.txt"}, {"file": "../outside.pdf"}, {"file": "missing.pdf"},
         {"file": "terms.pdf", "content_type": "application/x-msdownload"}], tmp_path)
    messages = dict(problems)
    assert "files named *.exe are refused" in messages["attachments[0].file"]
    assert "executable or a script" in messages["attachments[1].file"]
    assert "is not image/png (declared type checked)" in messages["attachments[2].file"]
    assert "executable or a script" in messages["attachments[3].file"]
    assert "outside the template folder" in messages["attachments[4].file"]
    assert "cannot read 'missing.pdf'" in messages["attachments[5].file"]
    assert "'application/x-msdownload' is not allowed" in messages["attachments[6].file"]


def test_limits_per_message_and_count(tmp_path):
    (tmp_path / "big.pdf").write_bytes(PDF_MAGIC + b"x" * 2_000)
    _, problems = att.parse_declaration(
        {"files": [{"file": "big.pdf"}], "max_message_bytes": 1_000}, tmp_path)
    assert problems == [("attachments", "the static files take 2025 bytes, more than the "
                                        "1000 bytes allowed per message")]
    declared = declaration(tmp_path, [{"name": "a.pdf", "pdf": "<p>{{ total }}</p>"}],
                           max_message_bytes=500)
    with pytest.raises(RenderError, match="more than the 500 bytes allowed per message"):
        att.render_attachments(declared, VARIABLES, uid="u")
    _, problems = att.parse_declaration([{"name": "x.pdf", "pdf": "<p/>"}] * 11, tmp_path)
    assert ("attachments", "at most 10 attachments") in problems
    declared = declaration(tmp_path, [{"name": "{{ orderId }}/../x.pdf", "pdf": "<p/>"}])
    with pytest.raises(RenderError, match="is not a file name"):
        att.render_attachments(declared, VARIABLES, uid="u")


def test_the_message_carries_bodies_calendar_and_files(tmp_path):
    (tmp_path / "conditions générales.pdf").write_bytes(PDF_MAGIC)
    declared = declaration(tmp_path, [
        {"file": "conditions générales.pdf"},
        {"name": "booking.ics", "ical": {"summary": "Stay", "start": "2026-05-01"}}])
    made = att.render_attachments(declared, VARIABLES, uid="u")
    _mid, data = build_email(
        log_id=5, sender="Shop <shop@example.com>", recipient="ann@example.com",
        subject="Your booking", html="<p>Hi</p>", text="Hi",
        attachments=[(a.name, a.content_type, a.data, a.alternative) for a in made])
    message = message_from_bytes(data, policy=policy.default)
    assert message.get_content_type() == "multipart/mixed"
    alternative = next(message.iter_parts())
    assert [p.get_content_type() for p in alternative.iter_parts()] == [
        "text/plain", "text/html", "text/calendar"]
    assert message.get_body(("plain",)).get_content().strip() == "Hi"
    files = {part.get_filename(): part for part in message.iter_attachments()}
    assert files["conditions générales.pdf"].get_content() == PDF_MAGIC
    assert Calendar.from_ical(files["booking.ics"].get_payload(decode=True))["method"]
    # without attachments the message is built as before (multipart/alternative)
    _mid, plain = build_email(log_id=5, sender="shop@example.com",
                              recipient="ann@example.com", subject="s", html="<p>x</p>",
                              text="x")
    assert b"multipart/alternative" in plain and b"multipart/mixed" not in plain


def test_from_event_is_declared_with_its_limits_and_checked(tmp_path):
    declared, problems = att.parse_declaration({"from_event": True}, tmp_path)
    assert problems == [] and declared["files"] == []
    assert declared["from_event"] == {"max_files": 10, "max_file_bytes": 10 * 1024 * 1024,
                                      "types": list(att.ALLOWED_TYPES), "urls": True}
    declared, problems = att.parse_declaration(
        {"from_event": {"max_files": 2, "types": ["application/pdf"], "urls": False}},
        tmp_path)
    assert declared["from_event"]["max_files"] == 2 and problems == []

    _, problems = att.parse_declaration({"from_event": {
        "max_files": 11, "max_file_bytes": 0, "types": ["application/x-msdownload"],
        "urls": "yes", "colour": 1}}, tmp_path)
    assert dict(problems) == {
        "attachments.from_event.colour": "unknown field (allowed: max_files, "
                                         "max_file_bytes, types, urls)",
        "attachments.from_event.max_files": "must be a number from 1 to 10",
        "attachments.from_event.max_file_bytes": "must be a number from 1 to 10485760",
        "attachments.from_event.types": "must be a list of content types from "
                                        + ", ".join(att.ALLOWED_TYPES),
        "attachments.from_event.urls": "must be true or false"}


@pytest.mark.parametrize(("name", "kind", "data", "words"), [
    ("a.pdf", "application/pdf", b"PK\x03\x04" + bytes(40), "executable or a script"),
    ("a.pdf", "application/pdf", b"\x7fELF" + bytes(60), "executable or a script"),
    ("a.png", "image/png", b"GIF89a" + bytes(10), "not image/png"),
    ("a.txt", "text/plain", b"MZ\x90\x00" + bytes(60), "not text/plain"),
    ("a.txt", "text/plain", b"#!/bin/sh\nrm -rf /\n", "executable or a script"),
])
def test_the_declared_type_is_checked_against_the_content(name, kind, data, words):
    assert words in (att.content_problem(name, kind, data) or "")


def test_an_event_file_must_fit_the_templates_from_event():
    allowed = {"max_files": 1, "max_file_bytes": 100, "types": ["application/pdf"],
               "urls": False}
    pdf = {"name": "a.pdf", "contentType": "application/pdf", "size": 50}
    assert att.event_attachments({"event_files": None}, 0, fetch=None) == []
    from message_center.attachment_rules import event_file_problem
    assert event_file_problem(0, pdf, allowed, 10_000) is None
    assert event_file_problem(1, pdf, allowed, 10_000)[0] == "attachments[1]"
    assert event_file_problem(0, {**pdf, "size": 101}, allowed, 10_000)[0] \
        == "attachments[0].content"
    assert event_file_problem(0, {**pdf, "size": 60}, allowed, 50)[0] \
        == "attachments[0].content"  # the message's budget left by the template's files
    assert event_file_problem(0, {**pdf, "contentType": "text/plain"}, allowed, 10_000)[0] \
        == "attachments[0].contentType"
    assert event_file_problem(0, {"name": "a.pdf", "contentType": "application/pdf",
                                  "url": "https://x.example/a.pdf"}, allowed, 10_000)[0] \
        == "attachments[0].url"
