"""Template attachments end to end: a template folder with a static PDF, an invoice
generated per event (WeasyPrint) and a booking invitation (icalendar) is validated,
versioned on the control database, published to a real execution database and delivered
by the real processing to the real SMTP sink, where the message is taken apart again."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

from icalendar import Calendar
from processing_factory import events, insert_events
from pypdf import PdfReader
from sqlalchemy import text
from template_factory import publish, write

from message_center.archiving import archive_window
from message_center.delivery.channels import Channels
from message_center.delivery.smtp import SmtpSettings
from message_center.ids import to_public
from message_center.lookup import LiveSource, event_detail
from message_center.processing import ProcessingSettings, deliver_shard, split_queue
from message_center.status_sync import sync_event_statuses

TERMS = b"%PDF-1.4\n% the terms and conditions, kept with the template\n"
BOOKING = """\
internal_name: bookingConfirmed
label: Booking confirmed
event_type: BOOKING
channel: email
sender: "Hotel <stay@hotel.example>"
subject: "Booking {{ bookingId }}"
text: "Hello {{ firstName }}, your stay is booked."
attachments:
  - file: terms.pdf
  - name: "invoice-{{ bookingId }}.pdf"
    pdf: |
      <h1>Invoice {{ bookingId }}</h1>
      <p>Guest: {{ firstName }}</p><p>Total: {{ total }} EUR</p>
  - name: "booking-{{ bookingId }}.ics"
    ical:
      summary: "Stay at {{ hotel }}"
      start: "{{ checkIn }}"
      end: "{{ checkOut }}"
      location: "{{ hotel }}, 1 Main Street"
seeds:
  - address: seed@example.com
    ctx: {firstName: Sam, bookingId: B-1, total: "10.00", hotel: Seed Inn,
          checkIn: "2026-05-01T15:00:00Z", checkOut: "2026-05-02T10:00:00Z"}
"""
SETTINGS = ProcessingSettings(shards=1, delivery_chunk=10)


def test_static_generated_pdf_and_invitation_reach_the_recipient(
        control_db, execution_db, execution2_db, urls, template_dir, smtp_sink,
        test_deployment):
    (template_dir / "terms.pdf").write_bytes(TERMS)
    write(template_dir, "booking.yaml", BOOKING)
    report = publish(urls, template_dir)
    assert report.errors == {} and ("bookingConfirmed", 1) in report.plan.stored
    with execution_db.connect() as conn:
        extras = conn.execute(text("SELECT extras FROM published_template "
                                   "WHERE internal_name = 'bookingConfirmed'")).scalar_one()
    assert [f["name"] for f in extras["attachments"]["files"]] == [
        "terms.pdf", "invoice-{{ bookingId }}.pdf", "booking-{{ bookingId }}.ics"]

    [event_id] = insert_events(execution_db, "batch", 1, type="BOOKING",
                               email="guest@example.com", ctx={
                                   "firstName": "Ada", "bookingId": "B-42", "total": "310.00",
                                   "hotel": "Grand Hotel", "checkIn": "2026-05-01T15:00:00Z",
                                   "checkOut": "2026-05-03T10:00:00Z"})
    with Channels(SmtpSettings(port=test_deployment.smtp_port), None, kind="batch") as chans:
        for claim in split_queue(execution_db, "batch", SETTINGS):
            deliver_shard(execution_db, claim, SETTINGS, chans, copy_status=True)
    sync_event_statuses(execution_db)
    assert events(execution_db, "batch", [event_id])[0]["status"] == "sent"

    [message] = [m for m in smtp_sink.messages() if str(m["To"]) == "guest@example.com"]
    assert message.get_body(("plain",)).get_content().strip() == (
        "Hello Ada, your stay is booked.")
    files = {part.get_filename(): part for part in message.iter_attachments()}
    assert sorted(files) == ["booking-B-42.ics", "invoice-B-42.pdf", "terms.pdf"]
    assert files["terms.pdf"].get_content() == TERMS  # the bytes, identical
    invoice = PdfReader(io.BytesIO(files["invoice-B-42.pdf"].get_content()))
    assert len(invoice.pages) == 1
    page = invoice.pages[0].extract_text()
    assert "Invoice B-42" in page and "Guest: Ada" in page and "Total: 310.00 EUR" in page
    [event] = Calendar.from_ical(files["booking-B-42.ics"].get_payload(decode=True)).walk(
        "VEVENT")
    assert str(event["summary"]) == "Stay at Grand Hotel"
    assert event.decoded("dtstart").isoformat() == "2026-05-01T15:00:00+00:00"
    assert str(event["attendee"]) == "mailto:guest@example.com"
    # also an alternative body part: mail clients show "Add to calendar"
    alternative = next(message.iter_parts())
    assert "text/calendar" in [p.get_content_type() for p in alternative.iter_parts()]

    # the lookup lists the version's attachments (names, types; size and hash of the file)
    detail = event_detail(to_public(event_id), [LiveSource(
        "mcExec", "Execution instance", execution_db, cell_id=0)], control_db)
    listed = detail["template"]["attachments"]
    assert [(f["name"], f["contentType"]) for f in listed] == [
        ("terms.pdf", "application/pdf"), ("invoice-{{ bookingId }}.pdf", "application/pdf"),
        ("booking-{{ bookingId }}.ics", "text/calendar")]
    assert listed[0]["size"] == len(TERMS) and len(listed[0]["sha256"]) == 64
    now = datetime.now(UTC)
    archive_window(execution_db, control_db, 0, now - timedelta(hours=1),
                   now + timedelta(minutes=1), statistics=False)
    archived = event_detail(to_public(event_id), [], control_db)  # from the stored version
    assert archived["source"] == "archive"
    assert archived["template"]["attachments"] == listed
