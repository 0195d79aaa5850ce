"""A template's ``ctx:`` declaration: how it is written, how a ctx is checked and
normalised against it (the push API's rule), and how template files are held to it
(seeds fit it; the template reads no variable it does not declare)."""

from __future__ import annotations

import pytest
from template_factory import problems_of, write

from mc_airflow.defaults import TEMPLATES_DIR
from message_center import templates as tpl
from message_center.templates.ctx_schema import check_ctx, compile_check, parse_declaration

pytestmark = pytest.mark.fast  # no database, no server: `make test-fast`


def test_a_declaration_is_field_to_type_with_a_question_mark_when_optional():
    schema, problems = parse_declaration({"total": "number", "note": "string?",
                                          "n": " integer ? "})
    assert problems == []
    assert schema == {"total": {"type": "number", "required": True},
                      "note": {"type": "string", "required": False},
                      "n": {"type": "integer", "required": False}}


@pytest.mark.parametrize(("raw", "field", "words"), [
    ({"total": "money"}, "total", "unknown type 'money'"),
    ({"total": 3}, "total", "must be a type"),
    ({"first name": "string"}, "first name", "letters, digits and _"),
    ([], None, "must be a mapping"),
    ({}, None, "must be a mapping"),
])
def test_bad_declarations_are_named(raw, field, words):
    _, problems = parse_declaration(raw)
    assert len(problems) == 1
    assert problems[0][0] == field and words in problems[0][1]


SCHEMA, _ = parse_declaration({"s": "string", "n": "number", "i": "integer?",
                               "b": "boolean?", "l": "list?", "o": "object?", "a": "any?"})


@pytest.mark.parametrize(("ctx", "normalised"), [
    ({"s": "x", "n": 1.5}, None),
    ({"s": "x", "n": "42.00"}, {"s": "x", "n": 42.0}),
    ({"s": "x", "n": " 42 "}, {"s": "x", "n": 42}),
    ({"s": "x", "n": "-1e3"}, {"s": "x", "n": -1000.0}),
    ({"s": 7, "n": 1}, {"s": "7", "n": 1}),
    ({"s": "x", "n": 1, "i": "12"}, {"s": "x", "n": 1, "i": 12}),
    ({"s": "x", "n": 1, "i": 3.0}, {"s": "x", "n": 1, "i": 3}),
    ({"s": "x", "n": 1, "b": "True"}, {"s": "x", "n": 1, "b": True}),
    ({"s": "x", "n": 1, "i": None, "l": [], "o": {}, "a": 0, "extra": object}, None),
])
def test_values_that_fit_are_accepted_and_normalised(ctx, normalised):
    assert check_ctx(SCHEMA, ctx, "t v1") == (normalised, [])
    assert compile_check(SCHEMA, "t v1")(ctx) == (normalised, [])  # the push path's


@pytest.mark.parametrize(("ctx", "field", "words"), [
    ({"n": 1}, "ctx.s", "ctx.s is missing: template t v1 needs it (text)"),
    ({"s": None, "n": 1}, "ctx.s", "ctx.s is null"),
    ({"s": "x", "n": "42,00"}, "ctx.n", "ctx.n must be a number for template t v1; got '42,00'"),
    ({"s": "x", "n": "nan"}, "ctx.n", "must be a number"),
    ({"s": "x", "n": "1e999"}, "ctx.n", "must be a number"),
    ({"s": "x", "n": True}, "ctx.n", "must be a number"),
    ({"s": "x", "n": 1, "i": 1.5}, "ctx.i", "must be a whole number"),
    ({"s": "x", "n": 1, "i": "1.0"}, "ctx.i", "must be a whole number"),
    ({"s": "x", "n": 1, "b": "yes"}, "ctx.b", "must be true or false"),
    ({"s": "x", "n": 1, "l": "a,b"}, "ctx.l", "must be a list"),
    ({"s": "x", "n": 1, "o": []}, "ctx.o", "must be an object"),
    ({"s": ["x"], "n": 1}, "ctx.s", "must be text"),
    ({"s": "x" * 100, "n": []}, "ctx.n", "got []"),
])
def test_values_that_do_not_fit_are_named(ctx, field, words):
    normalised, problems = check_ctx(SCHEMA, ctx, "t v1")
    assert compile_check(SCHEMA, "t v1")(ctx) == (normalised, problems)
    assert normalised is None or field.removeprefix("ctx.") not in normalised
    assert [name for name, _ in problems] == [field]
    assert words in problems[0][1]


def test_a_long_value_is_shortened_in_the_message():
    _, [(_, message)] = check_ctx(SCHEMA, {"s": "x", "n": "9" * 80 + "x"}, "t v1")
    assert message.endswith("...") and len(message) < 130


def test_the_repository_templates_declare_their_ctx():
    by_name = tpl.load_templates(TEMPLATES_DIR).by_name()
    order = by_name["orderConfirmed"].ctx_schema
    assert {name for name, spec in order.items() if spec["required"]} == {
        "firstName", "orderId", "total"}
    assert order["total"]["type"] == "number"
    assert by_name["orderConfirmed"].content()["ctx"] == order
    assert by_name["passwordReset"].ctx_schema["expiresMinutes"]["type"] == "integer"


DECLARED = """\
internal_name: deliveryUpdate
label: Delivery update
event_type: DELIVERY_UPDATE
channel: sms
ctx:
  firstName: string
  parcel: {parcel}
sms: "Hi {{{{ firstName }}}}, parcel {{{{ parcel }}}} arrives {{{{ when }}}}."
seeds:
  - address: "+33611111111"
    ctx: {{firstName: Ann, parcel: P-1, when: today}}
"""


def test_a_template_may_read_only_declared_variables(template_dir):
    path = write(template_dir, "delivery_update_sms.yaml", DECLARED.format(parcel="string"))
    assert problems_of(template_dir) == [
        f"{path}:8: sms: uses the variable 'when', which ctx does not declare (add it to "
        "ctx, e.g. when: string?)"]


def test_seeds_must_fit_the_declaration(template_dir):
    source = DECLARED.format(parcel="integer").replace(
        "arrives {{ when }}", "arrives today")
    path = write(template_dir, "delivery_update_sms.yaml", source)
    assert problems_of(template_dir) == [
        f"{path}:10: seeds[0].ctx.parcel: does not fit the ctx declaration: ctx.parcel must "
        "be a whole number for template deliveryUpdate; got 'P-1'"]


def test_seeds_render_as_a_pushed_event_is_stored(template_dir):
    source = (DECLARED.format(parcel="number").replace("arrives {{ when }}", "arrives today")
              .replace("parcel: P-1, when: today", "parcel: '12'"))
    write(template_dir, "delivery_update_sms.yaml", source)
    template_set = tpl.load_templates(template_dir)
    assert template_set.problems == []
    template = template_set.by_name()["deliveryUpdate"]
    assert template.seeds[0].ctx["parcel"] == 12
    assert tpl.render_seed(template, template.seeds[0]).sms == \
        "Hi Ann, parcel 12 arrives today."


def test_a_bad_declaration_points_at_its_line(template_dir):
    path = write(template_dir, "delivery_update_sms.yaml", DECLARED.format(parcel="money"))
    assert f"{path}:7: ctx.parcel: unknown type 'money'" in "\n".join(
        problems_of(template_dir))


def test_templates_without_a_declaration_keep_their_content_hash(template_dir):
    source = (TEMPLATES_DIR / "password_reset_sms.yaml").read_text()
    declared = tpl.load_templates(TEMPLATES_DIR).by_name()["passwordReset"]
    lines = source.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith("ctx:"))
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith("  "))
    write(template_dir, "password_reset_sms.yaml", "".join(lines[:start] + lines[end:]))
    plain = tpl.load_templates(template_dir).by_name()["passwordReset"]
    assert "ctx" not in plain.content() and plain.ctx_schema is None
    assert plain.content_hash() == tpl.content_hash(
        {key: value for key, value in declared.content().items() if key != "ctx"})
