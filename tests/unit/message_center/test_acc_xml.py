"""ACC's XML events: the hardened parser, the ctx rule of the README table, wishedChannel."""

from __future__ import annotations

import pytest

from message_center.acc_xml import (
    XmlRefused,
    ctx_from_xml,
    event_from_element,
    parse_xml,
    xml_location,
)
from message_center.events import EventValidationError

pytestmark = pytest.mark.fast  # no database, no server: `make test-fast`

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<lolz>&lol9;</lolz>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE ctx [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<ctx><firstName>&secret;</firstName></ctx>"""


def ctx(xml: str) -> dict:
    return ctx_from_xml(parse_xml(xml.encode()))


@pytest.mark.parametrize("body", [
    BILLION_LAUGHS, EXTERNAL_ENTITY,
    b'<!DOCTYPE x SYSTEM "http://127.0.0.1:1/x.dtd"><x/>',
    '<?xml version="1.0" encoding="utf-16"?><!DOCTYPE x [<!ENTITY e "e">]><x>&e;</x>'
    .encode("utf-16"),
])
def test_dtds_and_entity_declarations_are_refused(body):
    with pytest.raises(XmlRefused, match="DTD"):
        parse_xml(body)


@pytest.mark.parametrize("body", [b"", b"<a>", b"not xml", b"<a></b>", b"<a>&undefined;</a>"])
def test_malformed_xml_is_refused(body):
    with pytest.raises(XmlRefused, match="not well-formed"):
        parse_xml(body)


def test_the_documented_ctx_rule():
    # Adobe's "Data example" of the Event description page, plus attributes and repeats.
    assert ctx("""
        <ctx orderId="CN23453" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
             xsi:type="ns:Element">
          <client><firstname>John</firstname><lastname>Doe</lastname></client>
          <action><type>Order confirmation</type><number>CN23453</number></action>
          <orderdetails>
            <article num="1"><name>Generic USB key</name><price>20</price></article>
            <article num="2"><name>Cable</name><price currency="EUR">5</price></article>
          </orderdetails>
          <note/>
          <comment>  two  spaces </comment>
          <!-- comments are dropped -->
        </ctx>""") == {
        "orderId": "CN23453",
        "client": {"firstname": "John", "lastname": "Doe"},
        "action": {"type": "Order confirmation", "number": "CN23453"},
        "orderdetails": {"article": [
            {"num": "1", "name": "Generic USB key", "price": "20"},
            {"num": "2", "name": "Cable", "price": {"currency": "EUR", "#text": "5"}},
        ]},
        "note": "",
        "comment": "  two  spaces ",
    }


def test_ctx_edge_cases():
    assert ctx("<ctx/>") == {}
    assert ctx("<ctx>  </ctx>") == {}
    assert ctx("<ctx>just text</ctx>") == {"#text": "just text"}
    assert ctx('<ctx firstName="Jane"/>') == {"firstName": "Jane"}
    assert ctx('<u:ctx xmlns:u="urn:x"><u:a u:b="1"/></u:ctx>') == {"a": {"b": "1"}}
    assert ctx("<ctx><a>1</a><b/><a>2</a><a>3</a></ctx>") == {"a": ["1", "2", "3"], "b": ""}
    assert ctx("<ctx><p>x &amp; &lt;y&gt; &#233;</p></ctx>") == {"p": "x & <y> é"}


def event(xml: str, path: str = "rtEvent"):
    return event_from_element(parse_xml(xml.encode()), path)


def test_an_acc_event_element_becomes_the_json_event():
    # Adobe's "<rtEvent> configuration example".
    parsed = event('<rtEvent type="order_confirmation" email="john.doe@domain.com" '
                   'origin="eCommerce" wishedChannel="0" externalId="1242" '
                   'mobilePhone="+33620202020" emailFormat="2"><ctx><a>1</a></ctx></rtEvent>')
    assert parsed.kind == "rt"
    assert parsed.data == {"type": "order_confirmation", "email": "john.doe@domain.com",
                           "origin": "eCommerce", "wishedChannel": "email",
                           "externalId": "1242", "mobilePhone": "+33620202020",
                           "ctx": {"a": "1"}}
    assert event('<batchEvent type="T" email="a@b.example"/>').kind == "batch"
    assert event('<batchEvent type="T" email="a@b.example"/>').data["ctx"] == {}


@pytest.mark.parametrize(("value", "channel"), [
    ("0", "email"), ("1", "sms"), ("email", "email"), ("sms", "sms"), ("mobile", "sms"),
    ("Mobile", "sms"), (" 1 ", "sms"), ("", None)])
def test_wished_channel_numbers_and_labels(value, channel):
    data = event(f'<rtEvent type="T" wishedChannel="{value}"/>').data
    assert data.get("wishedChannel") == channel


@pytest.mark.parametrize(("xml", "location", "words"), [
    ('<rtEvent type="T" wishedChannel="7"/>', "rtEvent/@wishedChannel",
     "41, 'mobileApp' or 'webpush'"),
    ('<rtEvent type="T"><pushSubscription endpoint="https://p.example/1"/>'
     '<pushSubscription endpoint="https://p.example/2"/></rtEvent>',
     "rtEvent/pushSubscription", "more than one"),
    ('<rtEvent type="T" wishedChannel="2"/>', "rtEvent/@wishedChannel", "not supported"),
    ('<rtEvent type="T" registrationToken="x"/>', "rtEvent/@registrationToken",
     "unknown attribute"),
    ('<rtEvent type="T"><mobileApp uuid="x"/></rtEvent>', "rtEvent/mobileApp",
     "unknown element"),
    ('<rtEvent type="T"><ctx/><ctx/></rtEvent>', "rtEvent/ctx", "more than one"),
    ('<rtEvent type="T"><ctx a="1"><a>2</a></ctx></rtEvent>', "rtEvent/ctx", "both"),
    ('<event type="T"/>', "rtEvent", "not an event"),
])
def test_xml_problems_name_the_attribute_or_element(xml, location, words):
    with pytest.raises(EventValidationError) as refused:
        event(xml)
    (error,) = refused.value.errors
    assert error["field"] == location
    assert words in error["msg"]


def test_validation_errors_map_back_to_xml_locations():
    parsed = event('<rtEvent type="T"/>', "Events/rtEvent[3]")
    assert xml_location(parsed, "email") == "Events/rtEvent[3]/@email"
    assert xml_location(parsed, "events[2].mobilePhone") == "Events/rtEvent[3]/@mobilePhone"
    assert xml_location(parsed, "events[2].ctx") == "Events/rtEvent[3]/ctx"
    assert xml_location(parsed, "body") == "Events/rtEvent[3]"


def test_a_push_subscription_element_is_the_web_push_address():
    """wishedChannel 41 (ACC's mobile app channel) or mobileApp is Web Push; the
    subscription is the <pushSubscription endpoint= p256dh= auth=/> element."""
    parsed = event('<rtEvent type="orderShipped" wishedChannel="41">'
                   '<pushSubscription endpoint="https://push.example/s/1" p256dh="BP" '
                   'auth="au"/><ctx><orderId>A-1</orderId></ctx></rtEvent>')
    assert parsed.data == {"type": "orderShipped", "wishedChannel": "webpush",
                           "pushSubscription": {"endpoint": "https://push.example/s/1",
                                                "keys": {"p256dh": "BP", "auth": "au"}},
                           "ctx": {"orderId": "A-1"}}
    assert event('<rtEvent type="T" wishedChannel="mobileApp"/>').data["wishedChannel"] == (
        "webpush")
    assert xml_location(parsed, "pushSubscription") == "rtEvent/pushSubscription"
