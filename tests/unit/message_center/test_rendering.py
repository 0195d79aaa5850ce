"""The one renderer (delivery, validation, previews, proofs): sandboxed, strict, escaped."""

from __future__ import annotations

import pytest

from message_center.rendering import (
    RenderError,
    check_syntax,
    event_variables,
    render_message,
    render_part,
    template_event,
)

pytestmark = pytest.mark.fast  # no database, no server: `make test-fast`

ROW = {"type": "ORDER", "email": "a@example.com", "mobile_phone": None,
       "wished_channel": "email", "external_id": "EXT-1", "language": "fr", "country": None,
       "origin": "web", "scheduled": None, "expiration": None, "created": None,
       "ctx": {"firstName": "<Ann>"}}


def test_variables_are_ctx_keys_ctx_and_event_fields_in_both_spellings():
    variables = event_variables(template_event(ROW, 7))
    assert render_part("{{ firstName }} {{ ctx.firstName }}", variables) == "<Ann> <Ann>"
    assert render_part("{{ event.externalId }}/{{ event.external_id }}/{{ event.id }}",
                       variables) == "EXT-1/EXT-1/7"


def test_html_is_escaped_text_is_not():
    message = render_message("Hi {{ firstName }}", "<p>{{ firstName }}</p>", "{{ firstName }}",
                             event_variables(template_event(ROW, 1)))
    assert (message.subject, message.html, message.text) == (
        "Hi <Ann>", "<p>&lt;Ann&gt;</p>", "<Ann>")


def test_a_missing_variable_is_an_error_not_an_empty_string():
    with pytest.raises(RenderError, match="missing variable: 'orderId' is undefined"):
        render_part("Order {{ orderId }}", event_variables(template_event(ROW, 1)))


def test_the_sandbox_refuses_unsafe_attributes():
    with pytest.raises(RenderError, match="not allowed in a template"):
        render_part("{{ ''.__class__.__mro__ }}", {})


def test_syntax_errors_name_their_line():
    with pytest.raises(RenderError, match=r"\(line 2\)"):
        check_syntax("fine\n{{ broken }")


def test_a_render_error_names_the_part_line_expression_and_value():
    source = "Total\n{{ firstName }}: {{ '%.2f'|format(total) }} {{ currency }}"
    with pytest.raises(RenderError) as caught:
        render_part(source, {"firstName": "Jane", "total": "42.00", "currency": "EUR"},
                    part="text")
    assert str(caught.value) == (
        "template error: TypeError: must be real number, not str; at text line 2: "
        "{{ '%.2f'|format(total) }} with total = '42.00' (str)")


def test_a_render_error_in_a_loop_shows_the_loop_item_value():
    source = "{% for item in items %}\n- {{ '%d'|format(item.qty) }}\n{% endfor %}"
    with pytest.raises(RenderError, match=r"at html line 2: \{\{ '%d'\|format\(item.qty\) \}\} "
                                          r"with item.qty = 'two' \(str\)"):
        render_message(None, source, None, {"items": [{"qty": 1}, {"qty": "two"}]})


def test_a_missing_attribute_shows_the_object_that_lacks_it():
    with pytest.raises(RenderError, match=r"missing variable: .*; at subject line 1: "
                                          r"\{\{ client.name \}\} with client = \{\} \(dict\)"):
        render_message("Hi {{ client.name }}", None, None, {"client": {}})
