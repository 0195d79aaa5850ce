"""Message templates as files: validation that points at the file and line, previews a
person opens, proofs through a real SMTP server, versions on the control database and
publication to two real execution databases."""

from __future__ import annotations

import shutil
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from sqlalchemy import text

from mc_local.cli import main as mc
from message_center import templates as tpl
from message_center.publishing import unpublish
from message_center.rendering import event_variables, render_message

SAMPLES = tpl.TEMPLATES_DIR


@pytest.fixture
def template_dir(tmp_path: Path) -> Path:
    """A copy of the repository's templates to change freely."""
    directory = tmp_path / "message_templates"
    shutil.copytree(SAMPLES, directory)
    return directory


def write(directory: Path, name: str, body: str) -> Path:
    path = directory / name
    path.write_text(body, encoding="utf-8")
    return path


def problems_of(directory: Path) -> list[str]:
    return [str(problem) for problem in tpl.load_templates(directory).problems]


SMS_TEMPLATE = """\
internal_name: deliveryUpdate
label: Delivery update
event_type: DELIVERY_UPDATE
channel: sms
sms: "Hi {{ firstName }}, parcel {{ parcel }} arrives today."
seeds:
  - address: "+33611111111"
    ctx: {firstName: Ann, parcel: P-1}
"""


# ----------------------------------------------------------------------------- the samples


def test_repository_templates_are_valid_and_cover_the_demo():
    template_set = tpl.load_templates()
    assert template_set.problems == []
    by_type = {(t.event_type, t.channel): t for t in template_set.templates}
    order = by_type[("ORDER_CONFIRMED", "email")]
    assert order.internal_name == "orderConfirmed"
    assert order.html and order.text and order.subject and order.seeds
    reset = by_type[("PASSWORD_RESET", "sms")]
    assert reset.internal_name == "passwordReset" and reset.sms and reset.seeds


def test_validate_command_accepts_the_repository(capsys):
    assert mc(["templates", "validate"]) == 0
    assert "2 templates valid" in capsys.readouterr().out


# ----------------------------------------------------------------------------- validation


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
    source = (SAMPLES / "password_reset_sms.yaml").read_text()
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
    source = (SAMPLES / "order_confirmed_email.yaml").read_text()
    lines = source.splitlines()
    target = next(i for i, line in enumerate(lines) if "Thank you, {{ firstName }}!</h1>" in line)
    lines[target] = lines[target].replace("{{ firstName }}", "{{ firstName }")
    write(template_dir, "order_confirmed_email.yaml", "\n".join(lines) + "\n")
    [problem] = problems_of(template_dir)
    assert problem.startswith(
        f"{template_dir / 'order_confirmed_email.yaml'}:{target + 1}: html: template syntax "
        "error:"), problem


def test_duplicate_event_type_and_channel_names_both_files(template_dir):
    source = (SAMPLES / "password_reset_sms.yaml").read_text()
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


def test_every_seed_must_render(template_dir):
    source = (SAMPLES / "order_confirmed_email.yaml").read_text()
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


def test_validate_command_fails_with_located_problems(template_dir, capsys):
    write(template_dir, "delivery_update_sms.yaml", SMS_TEMPLATE.replace("{{ parcel }}",
                                                                          "{{ parcel }"))
    assert mc(["templates", "validate", "--dir", str(template_dir)]) == 1
    err = capsys.readouterr().err
    assert f"{template_dir / 'delivery_update_sms.yaml'}:5: sms: template syntax error" in err
    assert "1 problem in" in err


# ----------------------------------------------------------------------------- preview


def test_preview_writes_html_text_and_eml_rendered_like_the_delivery(tmp_path, capsys):
    out = tmp_path / "preview"
    assert mc(["templates", "preview", "orderConfirmed", "--seed", "alice@example.com",
               "--out", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    html = out / "orderConfirmed.alice@example.com.html"
    txt = out / "orderConfirmed.alice@example.com.txt"
    eml = out / "orderConfirmed.alice@example.com.eml"
    assert sorted(printed) == sorted(str(path) for path in (html, txt, eml))

    template = tpl.load_templates().find("orderConfirmed")
    seed = template.seeds[0]
    expected = render_message(template.subject, template.html, template.text, event_variables(
        {"type": "ORDER_CONFIRMED", "email": seed.address, "ctx": seed.ctx}))
    assert html.read_text() == expected.html
    assert "<h1" in expected.html and "Thank you, Alice!" in expected.html
    assert "Subject: Your order A-1001 is confirmed" in txt.read_text()
    assert txt.read_text().endswith(expected.text)
    message = message_from_bytes(eml.read_bytes(), policy=policy.default)
    assert message["Subject"] == "Your order A-1001 is confirmed"
    assert message["To"] == "alice@example.com"
    assert message.get_body(("plain",)).get_content() == expected.text
    assert message.get_body(("html",)).get_content() == expected.html


def test_preview_of_an_sms_shows_text_and_length(tmp_path):
    template = tpl.load_templates().find("passwordReset")
    [path] = tpl.write_preview(template, template.seeds[0], tmp_path)
    content = path.read_text()
    assert "Alice, your Demo Shop reset code is 482913." in content
    assert "GSM-7, 1 SMS part(s)" in content


def test_preview_of_an_unknown_template_or_seed_is_an_error(tmp_path, capsys):
    assert mc(["templates", "preview", "nope", "--out", str(tmp_path)]) == 1
    assert "no template 'nope'" in capsys.readouterr().err
    assert mc(["templates", "preview", "orderConfirmed", "--seed", "zoe@example.com",
               "--out", str(tmp_path)]) == 1
    assert "has no seed 'zoe@example.com'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_sms_segments():
    assert tpl.sms_segments("a" * 160) == ("GSM-7", 1)
    assert tpl.sms_segments("a" * 161) == ("GSM-7", 2)
    assert tpl.sms_segments("é" * 70) == ("GSM-7", 1)
    assert tpl.sms_segments("✓" * 71) == ("UCS-2", 2)


# ----------------------------------------------------------------------------- proof


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


# ----------------------------------------------------------------------------- control versions


def control_versions(control_db) -> list[tuple[str, int]]:
    with control_db.connect() as conn:
        return [tuple(row) for row in conn.execute(text(
            "SELECT internal_name, version FROM template_version ORDER BY 1, 2"))]


def active_rows(engine) -> list[tuple[str, int, str, str]]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(
            "SELECT internal_name, version, event_type, channel FROM published_template "
            "WHERE active ORDER BY 1"))]


def linked_template(engine, event_type: str, channel: str):
    """What the link step picks: the highest active version for (event type, channel)."""
    with engine.connect() as conn:
        return conn.execute(text(
            "SELECT internal_name, version, subject, sms_body FROM published_template "
            "WHERE active AND event_type = :t AND channel = :c ORDER BY version DESC LIMIT 1"),
            {"t": event_type, "c": channel}).one_or_none()


@pytest.fixture
def urls(test_deployment):
    return {
        "control": test_deployment.database_url("control"),
        "executions": {role: test_deployment.database_url(role)
                       for role in ("execution", "execution2")},
    }


def publish(urls, directory, **kwargs) -> tpl.PublishReport:
    return tpl.publish_repository(urls["control"], urls["executions"], directory=directory,
                                  **kwargs)


def test_publish_to_two_execution_databases(control_db, execution_db, execution2_db, urls,
                                            template_dir):
    report = publish(urls, template_dir)
    assert report.errors == {}
    assert report.plan.stored == [("orderConfirmed", 1), ("passwordReset", 1)]
    expected = [("orderConfirmed", 1, "ORDER_CONFIRMED", "email"),
                ("passwordReset", 1, "PASSWORD_RESET", "sms")]
    assert active_rows(execution_db) == expected
    assert active_rows(execution2_db) == expected
    with execution2_db.connect() as conn:
        row = conn.execute(text("SELECT * FROM published_template "
                                "WHERE internal_name = 'orderConfirmed'")).mappings().one()
    template = tpl.load_templates(template_dir).find("orderConfirmed")
    assert (row["subject"], row["html_body"], row["text_body"], row["sender"], row["language"]) \
        == (template.subject, template.html, template.text, template.sender, template.language)
    with control_db.connect() as conn:
        stored = conn.execute(text("SELECT t.published, t.current_version, v.content_hash "
                                   "FROM template t JOIN template_version v USING "
                                   "(internal_name) WHERE internal_name = 'orderConfirmed'")).one()
    assert tuple(stored) == (True, 1, template.content_hash())

    again = publish(urls, template_dir)  # nothing changed: no version, no write
    assert again.plan.stored == [] and not again.plan.changed
    assert all(not result.changed for result in again.results.values())
    assert control_versions(control_db) == [("orderConfirmed", 1), ("passwordReset", 1)]


def test_republish_after_a_change_creates_a_version_the_link_step_uses(
        control_db, execution_db, execution2_db, urls, template_dir):
    publish(urls, template_dir)
    path = template_dir / "order_confirmed_email.yaml"
    path.write_text(path.read_text().replace('subject: "Your order {{ orderId }} is confirmed"',
                                             'subject: "Order {{ orderId }}: confirmed"'))
    report = publish(urls, template_dir)
    assert report.plan.stored == [("orderConfirmed", 2)]
    assert control_versions(control_db) == [("orderConfirmed", 1), ("orderConfirmed", 2),
                                            ("passwordReset", 1)]
    for engine in (execution_db, execution2_db):
        assert report.results  # both instances switched in their own transaction
        linked = linked_template(engine, "ORDER_CONFIRMED", "email")
        assert (linked.internal_name, linked.version) == ("orderConfirmed", 2)
        assert linked.subject == "Order {{ orderId }}: confirmed"
        with engine.connect() as conn:
            versions = conn.execute(text(
                "SELECT version, active FROM published_template "
                "WHERE internal_name = 'orderConfirmed' ORDER BY version")).all()
        assert [tuple(v) for v in versions] == [(1, False), (2, True)]


def test_seed_changes_do_not_make_a_new_version(control_db, execution_db, execution2_db, urls,
                                                template_dir):
    publish(urls, template_dir)
    path = template_dir / "password_reset_sms.yaml"
    path.write_text(path.read_text().replace("+33612345678", "+33699999999"))
    assert publish(urls, template_dir).plan.stored == []


def test_unpublish_removes_from_every_instance_and_stays_removed(
        control_db, execution_db, execution2_db, urls, template_dir):
    publish(urls, template_dir)
    report = publish(urls, template_dir, only_changed=False, unpublish_names=["passwordReset"])
    assert report.plan.unpublished == ["passwordReset"]
    assert report.plan.stored == [] and report.plan.published == []
    for engine in (execution_db, execution2_db):
        assert [row[0] for row in active_rows(engine)] == ["orderConfirmed"]
        assert linked_template(engine, "PASSWORD_RESET", "sms") is None
    # A scheduled run (content unchanged) keeps it unpublished ...
    publish(urls, template_dir)
    assert [row[0] for row in active_rows(execution_db)] == ["orderConfirmed"]
    # ... publishing it by name brings it back, with the same version.
    report = publish(urls, template_dir, only_changed=False, names=["passwordReset"])
    assert report.plan.published == ["passwordReset"]
    assert active_rows(execution2_db)[1][:2] == ("passwordReset", 1)


def test_bad_publication_requests_change_nothing(control_db, execution_db, execution2_db, urls,
                                                 template_dir):
    with pytest.raises(ValueError, match="no template file for nope"):
        publish(urls, template_dir, only_changed=False, names=["nope"])
    with pytest.raises(ValueError, match="cannot unpublish nope: no such template"):
        publish(urls, template_dir, only_changed=False, unpublish_names=["nope"])
    write(template_dir, "bad.yaml", "internal_name: bad\n")
    with pytest.raises(tpl.TemplateValidationError, match=r"bad\.yaml:1: label"):
        publish(urls, template_dir)
    assert control_versions(control_db) == []
    assert active_rows(execution_db) == []


def test_a_renamed_template_replaces_the_old_one_for_its_event_type(
        control_db, execution_db, execution2_db, urls, template_dir):
    publish(urls, template_dir)
    old = template_dir / "password_reset_sms.yaml"
    write(template_dir, "password_reset_v2_sms.yaml", old.read_text().replace(
        "internal_name: passwordReset", "internal_name: passwordResetV2"))
    old.unlink()
    report = publish(urls, template_dir)
    assert report.plan.replaced == ["passwordReset"]
    for engine in (execution_db, execution2_db):
        assert [row[0] for row in active_rows(engine)] == ["orderConfirmed", "passwordResetV2"]
        assert linked_template(engine, "PASSWORD_RESET", "sms").internal_name == \
            "passwordResetV2"


def test_an_unreachable_instance_does_not_block_the_others(control_db, execution_db, urls,
                                                            template_dir):
    executions = {"execution": urls["executions"]["execution"],
                  "down": "postgresql://postgres@127.0.0.1:1/mc_execution"}
    report = tpl.publish_repository(urls["control"], executions, directory=template_dir)
    assert set(report.results) == {"execution"}
    assert "down" in report.errors and "OperationalError" in report.errors["down"]
    assert [row[0] for row in active_rows(execution_db)] == ["orderConfirmed", "passwordReset"]


def test_an_instance_that_drifted_is_brought_back_in_line(control_db, execution_db, urls,
                                                          template_dir):
    publish(urls, template_dir)
    with execution_db.begin() as conn:
        conn.execute(text("UPDATE published_template SET subject = 'tampered' "
                          "WHERE internal_name = 'orderConfirmed'"))
        conn.execute(text("INSERT INTO published_template (internal_name, label, event_type, "
                          "channel, version, sms_body) VALUES ('stray', 'Stray', 'X', 'sms', 1, "
                          "'x')"))
    with control_db.connect() as conn:
        desired = tpl.desired_state(conn)
    with execution_db.connect() as conn:
        assert not tpl.in_sync(conn, desired)
    with execution_db.begin() as conn:
        result = tpl.sync_instance(conn, desired)
    assert result.published == [("orderConfirmed", 1)] and result.removed == ["stray"]
    assert linked_template(execution_db, "ORDER_CONFIRMED", "email").subject != "tampered"
    with execution_db.connect() as conn:
        assert tpl.in_sync(conn, desired)


def test_publish_targets_come_from_the_registry_deduplicated(tmp_path, monkeypatch):
    registry = write(tmp_path, "accounts.yaml", """\
accounts:
- {name: mcExec1, label: Execution instance 1, conn_id: mc_execution, cell_id: 0}
- {name: mcExec2, label: Execution instance 2, conn_id: mc_execution2, cell_id: 1}
- {name: mcExec3, label: Retired, conn_id: mc_execution3, cell_id: 2, enabled: false}
""")
    monkeypatch.setenv("MC_ACCOUNT_REGISTRY", str(registry))
    targets, warnings = tpl.publish_targets()
    assert [(t.conn_id, t.label) for t in targets] == [
        ("mc_execution", "Execution instance 1"), ("mc_execution2", "Execution instance 2")]
    assert warnings == ["account mcExec3 is disabled: not published to"]
    monkeypatch.setenv("MC_ACCOUNT_REGISTRY", str(tmp_path / "none.yaml"))
    assert [t.conn_id for t in tpl.publish_targets()[0]] == ["mc_execution"]
    assert [t.conn_id for t in tpl.publish_targets(["b", "a", "b"])[0]] == ["b", "a"]


def test_setup_publishes_the_samples_to_the_local_deployment(control_db, execution_db,
                                                             execution2_db, test_deployment):
    line = tpl.publish_to_deployment(test_deployment)
    assert "orderConfirmed v1" in line and "passwordReset v1" in line
    for engine in (execution_db, execution2_db):
        assert [row[0] for row in active_rows(engine)] == ["orderConfirmed", "passwordReset"]
    assert tpl.publish_to_deployment(test_deployment) == "message templates: new versions: none"


def test_a_scheduled_check_finds_only_the_instances_behind(control_db, execution_db,
                                                           execution2_db, urls, template_dir):
    publish(urls, template_dir)
    with execution2_db.begin() as conn:
        unpublish(conn, "passwordReset")
    with control_db.connect() as conn:
        desired = tpl.desired_state(conn)
    url_of = {"mc_execution": urls["executions"]["execution"],
              "mc_execution2": urls["executions"]["execution2"],
              "mc_down": "postgresql://postgres@127.0.0.1:1/x"}.__getitem__
    targets = [tpl.PublishTarget(conn_id, conn_id)
               for conn_id in ("mc_execution", "mc_execution2", "mc_down")]
    behind, notes = tpl.targets_behind(desired, targets, url_of)
    assert [target.conn_id for target in behind] == ["mc_execution2", "mc_down"]
    assert any("mc_down: not checked: OperationalError" in note for note in notes)
    with control_db.begin() as conn:  # unchanged files: nothing new on the control side
        plan = tpl.plan_publication(conn, tpl.load_templates(template_dir), only_changed=True)
    assert not plan.changed


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
