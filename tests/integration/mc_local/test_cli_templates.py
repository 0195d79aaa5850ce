"""``mc templates`` validate, preview and proof (through a real SMTP server), and the
publication ``mc setup`` does on the local deployment."""

from __future__ import annotations

import getpass
from email import message_from_bytes, policy

import pytest
from sqlalchemy import text
from template_factory import SMS_TEMPLATE, active_rows, write

from mc_airflow.defaults import TEMPLATES_DIR
from mc_local.cli import main as mc
from mc_local.launcher import publish_to_deployment
from message_center import channel as channels
from message_center import templates as tpl
from message_center.rendering import RenderedMessage, event_variables


@pytest.mark.fast
def test_validate_command_accepts_the_repository(capsys):
    assert mc(["templates", "validate"]) == 0
    assert "3 templates valid" in capsys.readouterr().out


@pytest.mark.fast
def test_validate_command_fails_with_located_problems(template_dir, capsys):
    write(template_dir, "delivery_update_sms.yaml", SMS_TEMPLATE.replace("{{ parcel }}",
                                                                          "{{ parcel }"))
    assert mc(["templates", "validate", "--dir", str(template_dir)]) == 1
    err = capsys.readouterr().err
    assert f"{template_dir / 'delivery_update_sms.yaml'}:5: sms: template syntax error" in err
    assert "1 problem in" in err


@pytest.mark.fast
def test_preview_writes_html_text_and_eml_rendered_like_the_delivery(tmp_path, capsys):
    out = tmp_path / "preview"
    assert mc(["templates", "preview", "orderConfirmed", "--seed", "alice@example.com",
               "--out", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    html = out / "orderConfirmed.alice@example.com.html"
    txt = out / "orderConfirmed.alice@example.com.txt"
    eml = out / "orderConfirmed.alice@example.com.eml"
    assert sorted(printed) == sorted(str(path) for path in (html, txt, eml))

    template = tpl.load_templates(TEMPLATES_DIR).find("orderConfirmed")
    seed = template.seeds[0]
    # the demo template tracks: the preview shows its tracked links, pixel and mirror URL
    # (sample URLs the tracking server does not accept)
    rendered = channels.get("email").render(
        template.parts, event_variables({"type": "ORDER_CONFIRMED", "email": seed.address,
                                         "ctx": seed.ctx}), template.tracking.as_content())
    expected = RenderedMessage(rendered["subject"], rendered["html"], rendered["text"])
    assert html.read_text() == expected.html
    assert "/c/" in expected.html and "/o/" in expected.html and "/m/" in expected.text
    assert "<h1" in expected.html and "Thank you, Alice!" in expected.html
    assert "Subject: Your order A-1001 is confirmed" in txt.read_text()
    assert txt.read_text().endswith(expected.text)
    message = message_from_bytes(eml.read_bytes(), policy=policy.default)
    assert message["Subject"] == "Your order A-1001 is confirmed"
    assert message["To"] == "alice@example.com"
    assert message.get_body(("plain",)).get_content() == expected.text
    assert message.get_body(("html",)).get_content() == expected.html


@pytest.mark.fast
def test_preview_of_an_unknown_template_or_seed_is_an_error(tmp_path, capsys):
    assert mc(["templates", "preview", "nope", "--out", str(tmp_path)]) == 1
    assert "no template 'nope'" in capsys.readouterr().err
    assert mc(["templates", "preview", "orderConfirmed", "--seed", "zoe@example.com",
               "--out", str(tmp_path)]) == 1
    assert "has no seed 'zoe@example.com'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_proof_is_delivered_to_each_seed_over_smtp(smtp_sink, capsys):
    assert mc(["templates", "proof", "orderConfirmed"]) == 0
    assert "sent to bob@example.com" in capsys.readouterr().out
    messages = {m["To"]: m for m in smtp_sink.messages()}
    assert set(messages) == {"alice@example.com", "bob@example.com"}
    alice = messages["alice@example.com"]
    assert alice["Subject"] == "[Proof 1/2] Your order A-1001 is confirmed"
    assert alice["From"] == "Demo Shop <orders@shop.example>"
    assert alice["X-Envelope-To"] == "alice@example.com"
    assert "Thank you, Alice!" in alice.get_body(("html",)).get_content()
    assert "Total: 59.90 EUR" in alice.get_body(("plain",)).get_content()
    assert messages["bob@example.com"]["Subject"] == "[Proof 2/2] Your order A-1002 is confirmed"


def test_sms_proof_goes_by_email_to_the_given_address(smtp_sink):
    assert mc(["templates", "proof", "passwordReset", "--to", "qa@example.com"]) == 0
    [message] = smtp_sink.messages()
    assert message["To"] == "qa@example.com"
    assert "482913" in message.get_content()
    assert mc(["templates", "proof", "passwordReset"]) == 1  # phone numbers: no email


def test_refused_proof_is_reported(smtp_sink, capsys):
    smtp_sink.script("bob@example.com", "always 550 no such user")
    assert mc(["templates", "proof", "orderConfirmed"]) == 1
    captured = capsys.readouterr()
    assert "sent to alice@example.com" in captured.out
    assert "to bob@example.com not sent (failed)" in captured.err and "550" in captured.err


def test_setup_publishes_the_samples_to_the_local_deployment(control_db, execution_db,
                                                             execution2_db, test_deployment):
    line = publish_to_deployment(test_deployment)
    assert "orderConfirmed v1" in line and "passwordReset v1" in line
    for engine in (execution_db, execution2_db):
        assert [row[0] for row in active_rows(engine)] == [
            "orderConfirmed", "orderShippedPush", "passwordReset"]
    assert publish_to_deployment(test_deployment) == "message templates: new versions: none"


def test_publish_command_is_in_the_audit_trail_and_setup_is_not(
        control_db, execution_db, execution2_db, test_deployment, capsys):
    """A person who publishes from the command line is named on the Audit page like one who
    triggers the DAG; the publication ``mc setup`` does on its own is not a person's."""
    publish_to_deployment(test_deployment)
    assert mc(["templates", "publish", "orderConfirmed", "--profile",
               test_deployment.profile]) == 0
    assert "control: new versions: none" in capsys.readouterr().out  # republished as is
    with control_db.connect() as conn:
        rows = conn.execute(text("SELECT actor, action, target, details FROM audit_log")
                            ).mappings().all()
    assert len(rows) == 1, rows
    (row,) = rows
    assert row["actor"] == f"{getpass.getuser()} (mc templates publish)"
    assert (row["action"], row["target"]) == ("templates.publish", "orderConfirmed")
    assert row["details"] == {"unpublish": [], "summary": "new versions: none"}
