"""Previews: the files a person opens (SMS: the text and its length)."""

from __future__ import annotations

from email import message_from_bytes, policy

import pytest

from mc_airflow.defaults import TEMPLATES_DIR
from message_center import templates as tpl

pytestmark = pytest.mark.fast  # no database, no server: `make test-fast`


def test_preview_of_an_sms_shows_text_and_length(tmp_path):
    template = tpl.load_templates(TEMPLATES_DIR).find("passwordReset")
    [path] = tpl.write_preview(template, template.seeds[0], tmp_path)
    content = path.read_text()
    assert "Alice, your Demo Shop reset code is 482913." in content
    assert "GSM-7, 1 SMS part(s)" in content


def test_sms_segments():
    assert tpl.sms_segments("a" * 160) == ("GSM-7", 1)
    assert tpl.sms_segments("a" * 161) == ("GSM-7", 2)
    assert tpl.sms_segments("é" * 70) == ("GSM-7", 1)
    assert tpl.sms_segments("✓" * 71) == ("UCS-2", 2)


def test_preview_and_proof_carry_the_attachments(template_dir):
    (template_dir / "terms.pdf").write_bytes(b"%PDF-1.4\nterms\n")
    (template_dir / "mail.yaml").write_text("""\
internal_name: invoiceMail
label: Invoice
event_type: INVOICE
channel: email
subject: "Invoice {{ number }}"
text: "Your invoice {{ number }} is attached."
attachments:
  - file: terms.pdf
  - name: "invoice-{{ number }}.pdf"
    pdf: "<h1>Invoice {{ number }}</h1>"
seeds:
  - address: ann@example.com
    ctx: {number: F-9}
""")
    template = tpl.load_templates(template_dir).find("invoiceMail")
    out = template_dir.parent / "preview"
    written = tpl.write_preview(template, template.seeds[0], out)
    names = sorted(path.name for path in written)
    assert names == ["invoiceMail.ann@example.com.eml",
                     "invoiceMail.ann@example.com.invoice-F-9.pdf",
                     "invoiceMail.ann@example.com.terms.pdf",
                     "invoiceMail.ann@example.com.txt"]
    message = message_from_bytes((out / names[0]).read_bytes(), policy=policy.default)
    assert sorted(p.get_filename() for p in message.iter_attachments()) == [
        "invoice-F-9.pdf", "terms.pdf"]
