"""Versions on the control database and publication to two real execution databases."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from template_factory import active_rows, control_versions, linked_template, publish, write

from message_center import templates as tpl
from message_center.publishing import in_sync, sync_instance


def test_publish_to_two_execution_databases(control_db, execution_db, execution2_db, urls,
                                            template_dir):
    report = publish(urls, template_dir)
    assert report.errors == {}
    assert report.plan.stored == [("orderConfirmed", 1), ("orderShippedPush", 1),
                                  ("passwordReset", 1)]
    expected = [("orderConfirmed", 1, "ORDER_CONFIRMED", "email"),
                ("orderShippedPush", 1, "orderShipped", "webpush"),
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
    assert control_versions(control_db) == [("orderConfirmed", 1), ("orderShippedPush", 1),
                                            ("passwordReset", 1)]


def test_republish_after_a_change_creates_a_version_the_link_step_uses(
        control_db, execution_db, execution2_db, urls, template_dir):
    publish(urls, template_dir)
    path = template_dir / "order_confirmed_email.yaml"
    path.write_text(path.read_text().replace('subject: "Your order {{ orderId }} is confirmed"',
                                             'subject: "Order {{ orderId }}: confirmed"'))
    report = publish(urls, template_dir)
    assert report.plan.stored == [("orderConfirmed", 2)]
    assert control_versions(control_db) == [("orderConfirmed", 1), ("orderConfirmed", 2),
                                            ("orderShippedPush", 1), ("passwordReset", 1)]
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
        assert [row[0] for row in active_rows(engine)] == ["orderConfirmed",
                                                           "orderShippedPush"]
        assert linked_template(engine, "PASSWORD_RESET", "sms") is None
    # A scheduled run (content unchanged) keeps it unpublished ...
    publish(urls, template_dir)
    assert [row[0] for row in active_rows(execution_db)] == ["orderConfirmed", "orderShippedPush"]
    # ... publishing it by name brings it back, with the same version.
    report = publish(urls, template_dir, only_changed=False, names=["passwordReset"])
    assert report.plan.published == ["passwordReset"]
    assert active_rows(execution2_db)[-1][:2] == ("passwordReset", 1)


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
        assert [row[0] for row in active_rows(engine)] == [
            "orderConfirmed", "orderShippedPush", "passwordResetV2"]
        assert linked_template(engine, "PASSWORD_RESET", "sms").internal_name == \
            "passwordResetV2"


def test_an_unreachable_instance_does_not_block_the_others(control_db, execution_db, urls,
                                                            template_dir):
    executions = {"execution": urls["executions"]["execution"],
                  "down": "postgresql://postgres@127.0.0.1:1/mc_execution"}
    report = tpl.publish_repository(urls["control"], executions, directory=template_dir)
    assert set(report.results) == {"execution"}
    assert "down" in report.errors and "OperationalError" in report.errors["down"]
    assert [row[0] for row in active_rows(execution_db)] == [
            "orderConfirmed", "orderShippedPush", "passwordReset"]


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
        assert not in_sync(conn, desired)
    with execution_db.begin() as conn:
        result = sync_instance(conn, desired)
    assert result.published == [("orderConfirmed", 1)] and result.removed == ["stray"]
    assert linked_template(execution_db, "ORDER_CONFIRMED", "email").subject != "tampered"
    with execution_db.connect() as conn:
        assert in_sync(conn, desired)


def test_the_ctx_declaration_is_published_with_the_version_and_changes_it(
        control_db, execution_db, execution2_db, urls, template_dir):
    publish(urls, template_dir)
    declared = tpl.load_templates(template_dir).find("orderConfirmed").ctx_schema
    for engine in (execution_db, execution2_db):
        with engine.connect() as conn:
            assert conn.execute(text(
                "SELECT ctx_schema FROM published_template WHERE internal_name = "
                "'orderConfirmed' AND active")).scalar_one() == declared
            assert in_sync(conn, [tpl.published_content(
                {**tpl.load_templates(template_dir).find("orderConfirmed").content()}, 1),
                tpl.published_content(
                    tpl.load_templates(template_dir).find("orderShippedPush").content(), 1),
                tpl.published_content(
                    tpl.load_templates(template_dir).find("passwordReset").content(), 1)])
    path = template_dir / "order_confirmed_email.yaml"
    path.write_text(path.read_text().replace("  currency: string?\n", "  currency: string\n"))
    report = publish(urls, template_dir)
    assert report.plan.stored == [("orderConfirmed", 2)]  # a stricter ctx is a new version
    with execution_db.connect() as conn:
        assert conn.execute(text(
            "SELECT ctx_schema->'currency' FROM published_template WHERE active AND "
            "internal_name = 'orderConfirmed'")).scalar_one() == {"type": "string",
                                                                  "required": True}
