"""Template files are validated with problems that point at the file and the line, and
every seed renders with the delivery's renderer."""

from __future__ import annotations

import pytest
from template_factory import SMS_TEMPLATE, problems_of, write

from mc_airflow.defaults import TEMPLATES_DIR
from message_center import templates as tpl

pytestmark = pytest.mark.fast  # no database, no server: `make test-fast`


def test_repository_templates_are_valid_and_cover_the_demo():
    template_set = tpl.load_templates(TEMPLATES_DIR)
    assert template_set.problems == []
    by_type = {(t.event_type, t.channel): t for t in template_set.templates}
    order = by_type[("ORDER_CONFIRMED", "email")]
    assert order.internal_name == "orderConfirmed"
    assert order.html and order.text and order.subject and order.seeds
    reset = by_type[("PASSWORD_RESET", "sms")]
    assert reset.internal_name == "passwordReset" and reset.sms and reset.seeds


def test_yaml_syntax_error_names_file_and_line(template_dir):
    write(template_dir, "broken.yaml", "internal_name: x\nlabel: [unclosed\nchannel: sms\n")
    [problem] = problems_of(template_dir)
    assert problem.startswith(f"{template_dir / 'broken.yaml'}:")
    assert "YAML syntax error" in problem
    line = int(problem.split(":")[1])
    assert line in (2, 3, 4)


def test_missing_required_fields_are_each_reported(template_dir):
    write(template_dir, "partial.yaml", "internal_name: partial\nchannel: email\n"
          "html: <p>hi</p>\nseeds:\n  - address: a@example.com\n")
    problems = problems_of(template_dir)
    path = template_dir / "partial.yaml"
    for field in ("label", "event_type", "subject"):
        assert f"{path}:1: {field}: required field is missing" in "\n".join(problems), problems


def test_wrong_values_and_unknown_fields_point_at_their_line(template_dir):
    write(template_dir, "bad.yaml", """\
internal_name: 9lives
label: Bad
event_type: ORDER SHIPPED
channel: fax
language: no
subjet: typo
seeds: []
""")
    problems = "\n".join(problems_of(template_dir))
    path = template_dir / "bad.yaml"
    assert f"{path}:1: internal_name: '9lives' must start with a letter" in problems
    assert f"{path}:3: event_type: 'ORDER SHIPPED'" in problems
    assert f"{path}:4: channel: 'fax' is not a channel" in problems
    assert f"{path}:5: language: must be text, got bool False (quote it)" in problems
    assert f"{path}:6: subjet: unknown field" in problems
    assert f"{path}:7: seeds: must be a list of seed addresses" in problems


def test_duplicate_key_in_a_file_is_an_error(template_dir):
    source = (TEMPLATES_DIR / "password_reset_sms.yaml").read_text()
    source = source.replace("label: Password reset\n", "label: Password reset\nlabel: Other\n")
    write(template_dir, "password_reset_sms.yaml", source)
    [problem] = problems_of(template_dir)
    assert problem.startswith(f"{template_dir / 'password_reset_sms.yaml'}:4: label:")
    assert "defined twice" in problem


def test_channel_specific_fields(template_dir):
    write(template_dir, "mixed.yaml", """\
internal_name: mixed
label: Mixed
event_type: MIXED
channel: sms
subject: not for sms
seeds:
  - address: "+33600000000"
    ctx: {}
""")
    problems = "\n".join(problems_of(template_dir))
    path = template_dir / "mixed.yaml"
    assert f"{path}:1: sms: required field is missing" in problems
    assert f"{path}:5: subject: not used by an SMS template" in problems


def test_template_syntax_error_gives_the_file_line_of_the_bad_template_line(template_dir):
    source = (TEMPLATES_DIR / "order_confirmed_email.yaml").read_text()
    lines = source.splitlines()
    target = next(i for i, line in enumerate(lines) if "Thank you, {{ firstName }}!</h1>" in line)
    lines[target] = lines[target].replace("{{ firstName }}", "{{ firstName }")
    write(template_dir, "order_confirmed_email.yaml", "\n".join(lines) + "\n")
    [problem] = problems_of(template_dir)
    assert problem.startswith(
        f"{template_dir / 'order_confirmed_email.yaml'}:{target + 1}: html: template syntax "
        "error:"), problem


def test_duplicate_event_type_and_channel_names_both_files(template_dir):
    source = (TEMPLATES_DIR / "password_reset_sms.yaml").read_text()
    write(template_dir, "password_reset_sms_v2.yaml",
          source.replace("internal_name: passwordReset", "internal_name: passwordResetV2"))
    [problem] = problems_of(template_dir)
    assert problem.startswith(f"{template_dir / 'password_reset_sms_v2.yaml'}:")
    assert "event_type: event type 'PASSWORD_RESET' already has a sms template" in problem
    assert "passwordReset in" in problem and "password_reset_sms.yaml" in problem


def test_duplicate_internal_name_is_an_error(template_dir):
    write(template_dir, "zz_copy.yaml",
          SMS_TEMPLATE.replace("internal_name: deliveryUpdate", "internal_name: passwordReset"))
    [problem] = problems_of(template_dir)
    assert f"{template_dir / 'zz_copy.yaml'}:1: internal_name: 'passwordReset' is already used" \
        in problem


def without_ctx_declaration(source: str) -> str:
    """A template file as it was before ``ctx:`` declarations (the block removed)."""
    lines = source.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith("ctx:"))
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith("  "))
    return "".join(lines[:start] + lines[end:])


def test_every_seed_must_render(template_dir):
    # without a ctx declaration (which would refuse the seed first, see test_ctx_schema.py)
    source = without_ctx_declaration((TEMPLATES_DIR / "order_confirmed_email.yaml").read_text())
    source = source.replace("      firstName: Bob\n", "")
    write(template_dir, "order_confirmed_email.yaml", source)
    [problem] = problems_of(template_dir)
    lines = source.splitlines()
    seed_line = next(i for i, line in enumerate(lines) if "address: bob@example.com" in line) + 1
    assert problem.startswith(
        f"{template_dir / 'order_confirmed_email.yaml'}:{seed_line}: seeds[1] (bob@example.com): "
        "does not render: missing variable: 'firstName' is undefined"), problem


def test_seed_addresses_must_fit_the_channel(template_dir):
    write(template_dir, "delivery_update_sms.yaml",
          SMS_TEMPLATE.replace('"+33611111111"', "ann@example.com"))
    [problem] = problems_of(template_dir)
    assert ":7: seeds[0].address: 'ann@example.com' is not a mobile phone number" in problem


def test_seeds_can_set_event_fields_the_template_uses(template_dir):
    write(template_dir, "shipping_sms.yaml", """\
internal_name: shipping
label: Shipping
event_type: SHIPPED
channel: sms
sms: "Parcel {{ event.externalId }} for {{ name }} ({{ event.type }}, id {{ event.id }})"
seeds:
  - address: "+33622222222"
    ctx: {name: Ann}
    event: {external_id: EXT-9, id: 42}
""")
    template = tpl.load_templates(template_dir).find("shipping")
    rendered = tpl.render_seed(template, template.seeds[0])
    assert rendered.sms == "Parcel EXT-9 for Ann (SHIPPED, id 42)"
    write(template_dir, "shipping_sms.yaml",
          (template_dir / "shipping_sms.yaml").read_text().replace("id: 42", "id: x"))
    [problem] = problems_of(template_dir)
    assert ":9: seeds[0].event.id: must be a positive whole number" in problem


FALLBACK_MAIL = """\
internal_name: deliveryUpdateMail
label: Delivery update by e-mail
event_type: DELIVERY_UPDATE_MAIL
channel: email
subject: Your parcel
html: "<p>Parcel {{ parcel }} arrives today.</p>"
seeds:
  - address: ann@example.com
    ctx: {parcel: P-1}
"""


def test_on_failure_names_a_fallback_template_of_another_channel(template_dir):
    write(template_dir, "sms.yaml", SMS_TEMPLATE + """\
on_failure:
  channel: email
  template: deliveryUpdateMail
  after: [hard, quarantined]
""")
    write(template_dir, "mail.yaml", FALLBACK_MAIL)
    template_set = tpl.load_templates(template_dir)
    assert template_set.problems == []
    sms = template_set.find("deliveryUpdate")
    assert sms.on_failure == {"channel": "email", "template": "deliveryUpdateMail",
                              "after": ["hard", "quarantined"]}
    assert sms.content()["on_failure"] == sms.on_failure  # versioned and published
    assert "on_failure" not in template_set.find("deliveryUpdateMail").content()


def test_on_failure_problems_point_at_their_line(template_dir):
    write(template_dir, "sms.yaml", SMS_TEMPLATE + """\
on_failure:
  channel: sms
  template: 9bad
  after: [hard, unknown]
  when: always
""")
    problems = "\n".join(problems_of(template_dir))
    path = template_dir / "sms.yaml"
    assert f"{path}:10: on_failure.channel: must be another channel" in problems
    assert f"{path}:11: on_failure.template: '9bad' must be the internal name" in problems
    assert f"{path}:12: on_failure.after: must be a list of outcomes among hard, " \
           "retries_exhausted, quarantined (got ['hard', 'unknown']; 'unknown' outcomes " \
           "are never recycled" in problems
    assert f"{path}:13: on_failure.when: unknown field" in problems


def test_on_failure_template_must_exist_with_that_channel(template_dir):
    write(template_dir, "sms.yaml", SMS_TEMPLATE + """\
on_failure: {channel: email, template: nowhere, after: [hard]}
""")
    assert problems_of(template_dir) == [
        f"{template_dir / 'sms.yaml'}:9: on_failure.template: no template 'nowhere' in "
        "this folder"]


def test_attachments_are_read_checked_and_rendered_for_every_seed(template_dir):
    (template_dir / "terms.pdf").write_bytes(b"%PDF-1.4\nterms\n")
    (template_dir / "tool.exe").write_bytes(b"MZ\x90\x00")
    write(template_dir, "mail.yaml", FALLBACK_MAIL + """\
attachments:
  - file: terms.pdf
  - name: "parcel-{{ parcel }}.pdf"
    pdf: "<h1>Parcel {{ parcel }}</h1>"
  - name: delivery.ics
    ical: {summary: "Parcel {{ parcel }}", start: "2026-05-01T10:00:00Z"}
""")
    template_set = tpl.load_templates(template_dir)
    assert template_set.problems == []
    mail = template_set.find("deliveryUpdateMail")
    files = mail.content()["attachments"]["files"]
    assert [f["kind"] for f in files] == ["file", "pdf", "ical"]
    assert files[0]["size"] == 15 and len(files[0]["sha256"]) == 64

    write(template_dir, "mail.yaml", FALLBACK_MAIL + """\
attachments:
  - file: tool.exe
  - name: "{{ nothing }}.pdf"
    pdf: "<p/>"
""")
    write(template_dir, "sms.yaml", SMS_TEMPLATE + "attachments: [{file: terms.pdf}]\n")
    problems = "\n".join(problems_of(template_dir))
    mail_path, sms_path = template_dir / "mail.yaml", template_dir / "sms.yaml"
    assert f"{mail_path}:10: attachments[0].file: 'tool.exe': files named *.exe are " \
           "refused (executables and scripts)" in problems
    assert f"{sms_path}:9: attachments: not used by an SMS template" in problems

    write(template_dir, "mail.yaml", FALLBACK_MAIL + """\
attachments:
  - name: "{{ nothing }}.pdf"
    pdf: "<p/>"
""")
    (template_dir / "sms.yaml").unlink()
    problems = problems_of(template_dir)
    assert "seeds[0] (ann@example.com): does not render: missing variable" in problems[0], \
        problems
