"""The tracking fields of a template file: checked like the rest, versioned, rendered in
previews with sample URLs."""

from __future__ import annotations

from message_center.templates.validation import load_templates, render_seed

EMAIL = """internal_name: news
label: News
event_type: NEWS
channel: email
subject: "Hello"
html: '<p><a href="https://shop.example/">Shop</a> <a href="{{ mirror_url }}">View</a>
  <a href="{{ unsubscribe_url }}">Stop</a></p>'
text: "Online: {{ mirror_url }}"
tracking: {opens: true, clicks: true}
mirror_page: true
unsubscribe: {category: newsletter}
seeds:
  - address: a@example.com
    ctx: {}
"""


def write(tmp_path, name, source):
    (tmp_path / f"{name}.yaml").write_text(source, encoding="utf-8")


def test_tracking_fields_are_versioned_and_previewed(tmp_path):
    write(tmp_path, "news", EMAIL)
    templates = load_templates(tmp_path)
    assert templates.ok, templates.problems
    (template,) = templates.templates
    content = template.content()
    assert content["tracking"] == {"opens": True, "clicks": True}
    assert content["mirror_page"] is True
    assert content["unsubscribe"] == {"category": "newsletter"}
    rendered = render_seed(template, template.seeds[0])
    assert "/c/" in rendered.html and "/o/" in rendered.html  # sample tracked URLs
    assert "/m/" in rendered.text


def test_tracking_problems_name_the_field(tmp_path):
    write(tmp_path, "bad", EMAIL.replace("tracking: {opens: true, clicks: true}",
                                         "tracking: {opens: maybe}")
          .replace("mirror_page: true\n", ""))
    write(tmp_path, "sms", """internal_name: code
label: Code
event_type: CODE
channel: sms
sms: "Your code"
tracking: {opens: true}
seeds:
  - address: "+33612345678"
    ctx: {}
""")
    problems = [str(p) for p in load_templates(tmp_path).problems]
    assert any("tracking.opens: must be true or false" in p for p in problems), problems
    assert any("uses mirror_url, which needs mirror_page: true" in p for p in problems)
    assert any("sms.yaml" in p and "cannot be tracked" in p for p in problems)


def test_text_links_are_tracked_where_the_author_marks_them(tmp_path):
    write(tmp_path, "news", EMAIL.replace(
        'text: "Online: {{ mirror_url }}"',
        'text: "Order: {{ (\'https://shop.example/o/\' ~ n) | tracked }}\\n'
        'Help: {% filter tracked %}https://shop.example/help{% endfilter %}\\n'
        'Not tracked: https://shop.example/plain\\nMail: {{ \'mailto:a@b.c\' | tracked }}"')
          .replace("ctx: {}", "ctx: {n: 7}"))
    templates = load_templates(tmp_path)
    assert templates.ok, templates.problems
    (template,) = templates.templates
    text = render_seed(template, template.seeds[0]).text
    lines = text.splitlines()
    # the preview shows tracked links (numbered after the one of the HTML part)
    assert lines[0].startswith("Order: http") and "/c/" in lines[0]
    assert lines[1].startswith("Help: http") and "/c/" in lines[1]
    assert lines[2] == "Not tracked: https://shop.example/plain"
    assert lines[3] == "Mail: mailto:a@b.c"  # not http(s): left as written
    assert "\ue000" not in text and "\ue001" not in text


def test_the_tracked_filter_is_checked(tmp_path):
    write(tmp_path, "off", EMAIL.replace("clicks: true", "clicks: false").replace(
        'text: "Online: {{ mirror_url }}"', 'text: "{{ \'https://shop.example/\' | tracked }}"'))
    write(tmp_path, "inhtml", EMAIL.replace("internal_name: news", "internal_name: inhtml")
          .replace("event_type: NEWS", "event_type: INHTML")
          .replace('<a href="https://shop.example/">',
                   '<a href="{{ "https://shop.example/" | tracked }}">'))
    write(tmp_path, "sms", """internal_name: code
label: Code
event_type: CODE
channel: sms
sms: "Your code: {{ 'https://shop.example/' | tracked }}"
seeds:
  - address: "+33612345678"
    ctx: {}
""")
    problems = [str(p) for p in load_templates(tmp_path).problems]
    assert any("off.yaml" in p and "text" in p and "tracked filter, which needs tracking: "
               "{clicks: true}" in p for p in problems), problems
    assert any("inhtml.yaml" in p and "html" in p and "text part only" in p
               for p in problems), problems
    assert any("sms.yaml" in p and "text part only" in p for p in problems), problems
