"""ACC's SOAP API (``/nl/jsp/soaprouter.jsp``, ``/nl/jsp/schemawsdl.jsp``) over HTTP with a
FastAPI TestClient on the real execution database, mounted under ``/nl`` as the plugin
mounts it. Adobe's documented requests are posted literally; sessions and rights are fakes
here (Airflow's run in tests/integration/plugins/test_acc_compat_server.py).
"""

from __future__ import annotations

import pytest
import zeep
from acc_fixtures import ADOBE_SESSION_TOKEN, LOGINS, RIGHTS, FakeSessions
from fastapi import FastAPI
from fastapi.testclient import TestClient
from lxml import etree
from sqlalchemy import text

from message_center.api.soap import MAX_SOAP_EVENT_BODY_BYTES, create_soap_app
from message_center.ids import cell_of, to_stored

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
XSI = "http://www.w3.org/2001/XMLSchema-instance"

# Adobe knowledge base KA-19369 "How to make PushEvent and PushEvents SOAP calls", verbatim
# (with the credentials placeholder "login/password" valid for the fake sessions).
KB_PUSH_EVENT = """<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:urn="urn:nms:rtEvent">
   <soapenv:Header/>
   <soapenv:Body>
      <urn:PushEvent>
         <urn:sessiontoken>login/password</urn:sessiontoken>
         <urn:domEvent>
            <rtEvent type="test" email="xxx@gmail.com">
                <ctx>
                    <firstName>ABC</firstName>
                   <lastName>DEF</lastName>
                </ctx>
            </rtEvent>
         </urn:domEvent>
      </urn:PushEvent>
   </soapenv:Body>
</soapenv:Envelope>"""  # noqa: E501

# Adobe's "Event description" page: the PushEvent example with its <rtEvent> configuration
# example and its ctx "Data example" (the page shows the fragments; the envelope around
# them is the one of the page's other examples).
DATA_EXAMPLE = """<ctx>
               <client>
                        <firstname>John</firstname>
                        <lastname>Doe</lastname>
               </client>
               <action>
                         <type>Order confirmation</type>
                          <number>CN23453</number>
               </action>
               <orderdetails>
                          <article num="1">
                                   <name>Generic USB key</name>
                                   <price>20</price>
                           </article>
               </orderdetails>
    </ctx>"""
CONFIGURATION_EXAMPLE = ('<rtEvent type="order_confirmation" email="john.doe@domain.com" '
                         'origin="eCommerce" wishedChannel="0" externalId="1242" '
                         'mobilePhone="+33620202020">')
DOC_PUSH_EVENT = f"""<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:urn="urn:nms:rtEvent">
<soapenv:Body>
<urn:PushEvent>

 <sessiontoken>___921f9b38-72ac-49ad-b481-ab32973efc50</sessiontoken>
 
 <urn:domEvent>
 
   {CONFIGURATION_EXAMPLE}
   {DATA_EXAMPLE}
   </rtEvent>
 
 </urn:domEvent>

</urn:PushEvent>
</soapenv:Body>
</soapenv:Envelope>"""  # noqa: E501, W293

DOC_PUSH_EVENTS = f"""<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:urn="urn:nms:batchEvent">
<soapenv:Body>
<urn:PushEvents>

 <sessiontoken>___921f9b38-72ac-49ad-b481-ab32973efc50</sessiontoken>
 
 <urn:domEventCollection>
 
   <Events>
   
     <batchEvent type="order_confirmation" email="john.doe@domain.com" externalId="1">{DATA_EXAMPLE}</batchEvent>
     
     <batchEvent type="order_confirmation" email="jane.doe@domain.com" externalId="2"><ctx/></batchEvent>
     
     <rtEvent type="password_reset" mobilePhone="+33620202020" wishedChannel="1"><ctx code="4711"/></rtEvent>
   
   </Events>
 
 </urn:domEventCollection>

</urn:PushEvents>
</soapenv:Body>
</soapenv:Envelope>"""  # noqa: E501, W293

# The page's mobile push example (wishedChannel 41 = iOS push): refused, push channels are
# not supported yet. Verbatim inside an envelope; "mc/PASSWORD" is a login/password.
DOC_PUSH_CHANNEL = """<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>
<PushEvent xmlns="urn:nms:rtEvent">
<sessiontoken>mc/PASSWORD</sessiontoken>
<domEvent>
<rtEvent wishedChannel="41" type="rt_MobileJourney_iOS_Push" registrationToken="c3ddc8aaecc24822df25d0f49865cca61ea3f86c61bfa53ae4d37294e37f4a1c" hashlpId="27EE7571EC14DBA23B9B5CC0EF79BB782DAECF4C03C88E5D92CC9B9DAC4E5DDA" correlationId="415b7593-4f6f-e911-811f-00505691247c" xmlns="">
<mobileApp uuid="236B24DC-C073-412F-8BCB-AC7207096258" _operation="none"/>
<ctx>...</ctx>
</rtEvent>
</domEvent>
</PushEvent>
</soapenv:Body></soapenv:Envelope>"""  # noqa: E501

RT = ("nms:rtEvent", "urn:nms:rtEvent")
BATCH = ("nms:batchEvent", "urn:nms:batchEvent")


def envelope(method: str, params: str, service: tuple[str, str] = RT) -> str:
    return (f'<soapenv:Envelope xmlns:soapenv="{SOAP_ENV}" xmlns:urn="{service[1]}">'
            f"<soapenv:Body><urn:{method}>{params}</urn:{method}></soapenv:Body>"
            "</soapenv:Envelope>")


def push_event(event_xml: str, token: str = ADOBE_SESSION_TOKEN) -> str:
    return envelope("PushEvent", f"<urn:sessiontoken>{token}</urn:sessiontoken>"
                                 f"<urn:domEvent>{event_xml}</urn:domEvent>")


def push_events(events_xml: list[str], token: str = ADOBE_SESSION_TOKEN,
                service: tuple[str, str] = BATCH) -> str:
    return envelope("PushEvents", f"<urn:sessiontoken>{token}</urn:sessiontoken>"
                                  f"<urn:domEventCollection><Events>{''.join(events_xml)}"
                                  "</Events></urn:domEventCollection>", service)


@pytest.fixture
def sessions():
    return FakeSessions()


@pytest.fixture
def soap(execution_db, test_deployment, sessions):
    root = FastAPI()
    root.mount("/nl", create_soap_app(sessions, lambda: test_deployment.database_url(
        "execution"), authorization=RIGHTS))
    return TestClient(root, base_url="http://testserver")


def post(client, body: str | bytes, action: str | None = "nms:rtEvent#PushEvent",
         **headers: str):
    if action is not None:
        headers["SOAPAction"] = f'"{action}"'
    return client.post("/nl/jsp/soaprouter.jsp", content=body,
                       headers={"Content-Type": "text/xml; charset=utf-8", **headers})


def pl_ids(response) -> list[int]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/xml")
    root = etree.fromstring(response.content)
    nodes = root.findall(f"{{{SOAP_ENV}}}Body/*/plId")
    assert nodes and all(node.get(f"{{{XSI}}}type") == "xsd:long" for node in nodes)
    return [int(node.text) for node in nodes]


def fault(response) -> tuple[str, str, str]:
    """(faultcode, faultstring, detail) of a SOAP Fault answer."""
    root = etree.fromstring(response.content)
    node = root.find(f"{{{SOAP_ENV}}}Body/{{{SOAP_ENV}}}Fault")
    assert node is not None, response.text
    return node.findtext("faultcode"), node.findtext("faultstring"), node.findtext("detail") or ""


def rows(engine, kind: str = "rt") -> list[dict]:
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(text(
            f"SELECT id, type, email, mobile_phone, wished_channel, external_id, origin, ctx "
            f"FROM {kind}_event ORDER BY id")).mappings()]


def nothing_stored(engine) -> bool:
    with engine.connect() as conn:
        return conn.execute(text(
            "SELECT (SELECT count(*) FROM rt_event) + (SELECT count(*) FROM batch_event) + "
            "(SELECT count(*) FROM api_idempotency)")).scalar_one() == 0


# --- Adobe's examples -------------------------------------------------------------------
def test_the_knowledge_base_push_event_example(soap, execution_db):
    response = post(soap, KB_PUSH_EVENT)
    (pl_id,) = pl_ids(response)
    assert pl_id > 0 and cell_of(pl_id) == 0
    root = etree.fromstring(response.content)
    answer = root.find(f"{{{SOAP_ENV}}}Body/{{urn:nms:rtEvent}}PushEventResponse")
    assert answer is not None
    (row,) = rows(execution_db)
    assert (row["type"], row["email"], row["wished_channel"]) == ("test", "xxx@gmail.com",
                                                                  "email")
    assert row["ctx"] == {"firstName": "ABC", "lastName": "DEF"}


def test_the_event_description_push_event_example(soap, execution_db):
    (_pl_id,) = pl_ids(post(soap, DOC_PUSH_EVENT))
    (row,) = rows(execution_db)
    assert row["type"] == "order_confirmation" and row["external_id"] == "1242"
    assert (row["email"], row["mobile_phone"], row["origin"]) == (
        "john.doe@domain.com", "+33620202020", "eCommerce")
    assert row["ctx"] == {
        "client": {"firstname": "John", "lastname": "Doe"},
        "action": {"type": "Order confirmation", "number": "CN23453"},
        "orderdetails": {"article": {"num": "1", "name": "Generic USB key", "price": "20"}},
    }


def test_the_push_events_example_queues_by_element_name(soap, execution_db):
    ids = pl_ids(post(soap, DOC_PUSH_EVENTS, "nms:batchEvent#PushEvents"))
    assert len(ids) == 3 and len(set(ids)) == 3
    batch, (rt,) = rows(execution_db, "batch"), rows(execution_db, "rt")
    assert sorted(row["external_id"] for row in batch) == ["1", "2"]
    assert rt["type"] == "password_reset" and rt["wished_channel"] == "sms"
    assert rt["ctx"] == {"code": "4711"}
    # plIds come back in the order of the events in the request
    by_id = {row["id"]: row["external_id"] for row in batch} | {rt["id"]: "rt"}
    assert [by_id[to_stored(i)] for i in ids] == ["1", "2", "rt"]


def test_the_native_app_push_example_is_refused_naming_the_attribute(soap, execution_db,
                                                                      sessions, monkeypatch):
    """wishedChannel 41 (ACC's mobile app channel) is Web Push here: ACC's native-app
    fields (APNs/FCM registration token, <mobileApp>) are refused, each named."""
    monkeypatch.setitem(LOGINS, ("mc", "PASSWORD"), "tok-operator")
    response = post(soap, DOC_PUSH_CHANNEL)
    assert response.status_code == 500
    code, message, detail = fault(response)
    assert code == "SOAP-ENV:Client"
    assert "rtEvent/@registrationToken" in message
    assert "rtEvent/@wishedChannel" not in detail  # 41 is accepted: the Web Push channel
    for where in ("rtEvent/@registrationToken", "rtEvent/@hashlpId", "rtEvent/@correlationId",
                  "rtEvent/mobileApp"):
        assert where in detail
    assert nothing_stored(execution_db)


# --- faults: bad events store nothing --------------------------------------------------
@pytest.mark.parametrize(("event", "where", "words"), [
    ('<rtEvent email="a@example.com"/>', "rtEvent/@type", "type is required"),
    ('<rtEvent type="T" email="not-an-address"/>', "rtEvent/@email", "not a valid email"),
    ('<rtEvent type="T"/>', "rtEvent/@email", "email is required"),
    ('<rtEvent type="T" wishedChannel="1" email="a@example.com"/>', "rtEvent/@mobilePhone",
     "mobilePhone is required"),
    ('<rtEvent type="T" email="a@example.com" scheduled="tomorrow"/>', "rtEvent/@scheduled",
     "ISO 8601"),
    ('<rtEvent type="T" email="a@example.com" language="' + "x" * 40 + '"/>',
     "rtEvent/@language", "language"),
    (f'<rtEvent type="T" email="a@example.com"><ctx><a>{"x" * 70000}</a></ctx></rtEvent>',
     "rtEvent/ctx", "larger than"),
    ('<rtEvent type="T" email="a@example.com" color="red"/>', "rtEvent/@color",
     "unknown attribute"),
    ('<order type="T" email="a@example.com"/>', "order", "not an event"),
])
def test_a_bad_event_is_a_fault_naming_the_attribute(soap, execution_db, event, where, words):
    response = post(soap, push_event(event), **{"Idempotency-Key": "bad-1"})
    assert response.status_code == 500
    code, message, _detail = fault(response)
    assert code == "SOAP-ENV:Client"
    assert f"{where}: " in message and words in message, message
    assert "method 'PushEvent' of service 'nms:rtEvent'" in message
    assert nothing_stored(execution_db)


def test_a_batch_with_one_bad_event_stores_none_and_names_it(soap, execution_db):
    good = '<batchEvent type="T" email="a@example.com"/>'
    response = post(soap, push_events([good, good, '<batchEvent type="T" email="nope"/>',
                                       '<batchEvent type="T" wishedChannel="9"/>']),
                    "nms:batchEvent#PushEvents")
    _, message, detail = fault(response)
    assert "Events/batchEvent[3]/@email: email is not a valid email address" in message
    assert "(and 1 more, see detail)" in message
    assert "Events/batchEvent[4]/@wishedChannel" in detail
    assert nothing_stored(execution_db)


@pytest.mark.parametrize(("count", "words"), [(0, "got 0"), (1001, "got 1001")])
def test_a_batch_needs_1_to_1000_events(soap, execution_db, count, words):
    body = push_events(['<batchEvent type="T" email="a@example.com"/>'] * count)
    _, _message, detail = fault(post(soap, body, "nms:batchEvent#PushEvents"))
    assert "1 to 1000 events" in detail and words in detail
    assert nothing_stored(execution_db)


def test_a_full_batch_of_1000(soap, execution_db):
    body = push_events([f'<batchEvent type="T" email="u{i}@example.com" externalId="{i}"/>'
                        for i in range(1000)])
    assert len(pl_ids(post(soap, body, "nms:batchEvent#PushEvents"))) == 1000
    assert len(rows(execution_db, "batch")) == 1000


@pytest.mark.parametrize(("body", "action", "words"), [
    ("not xml at all", "nms:rtEvent#PushEvent", "not well-formed"),
    ("<a/>", "nms:rtEvent#PushEvent", "SOAP 1.1 Envelope"),
    ('<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope"><e:Body/></e:Envelope>',
     None, "SOAP 1.2 is not supported"),
    (f'<e:Envelope xmlns:e="{SOAP_ENV}"><e:Body/></e:Envelope>', None, "no method"),
    (envelope("Delete", ""), "nms:rtEvent#Delete", "Method 'Delete' of service 'nms:rtEvent'"),
    (push_event('<rtEvent type="T" email="a@example.com"/>'), "nms:batchEvent#PushEvent",
     "does not match"),
    (envelope("PushEvent", "<urn:sessiontoken>login/password</urn:sessiontoken>"), None,
     "exactly one <rtEvent>"),
])
def test_protocol_errors_are_faults(soap, execution_db, body, action, words):
    response = post(soap, body, action)
    assert response.status_code == 500
    _, message, detail = fault(response)
    assert words in message + detail
    assert nothing_stored(execution_db)


def test_a_method_element_without_namespace_takes_the_soap_action(soap, execution_db):
    body = (f'<e:Envelope xmlns:e="{SOAP_ENV}"><e:Body><PushEvent>'
            f"<sessiontoken>{ADOBE_SESSION_TOKEN}</sessiontoken><domEvent>"
            '<rtEvent type="T" email="a@example.com"/></domEvent></PushEvent></e:Body>'
            "</e:Envelope>")
    assert len(pl_ids(post(soap, body))) == 1


# --- hostile XML -----------------------------------------------------------------------
def test_billion_laughs_and_external_entities_are_refused(soap, execution_db):
    laughs = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    bomb = (f'<?xml version="1.0"?><!DOCTYPE e [<!ENTITY l0 "lol">{laughs}]>'
            + push_event('<rtEvent type="T" email="a@example.com"><ctx><a>&l9;</a></ctx>'
                         "</rtEvent>"))
    external = ('<?xml version="1.0"?><!DOCTYPE e [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                + push_event('<rtEvent type="T" email="a@example.com"><ctx><a>&x;</a></ctx>'
                             "</rtEvent>"))
    for body in (bomb, external):
        response = post(soap, body)
        assert response.status_code == 500
        _, message, detail = fault(response)  # the DTD refused: no entity expanded
        assert message == "The XML SOAP message is invalid." and "DTD" in detail
        assert "root:" not in response.text
    assert nothing_stored(execution_db)


def test_an_oversized_body_is_refused_before_parsing(soap, execution_db):
    big = push_event(f'<rtEvent type="T" email="a@example.com"><ctx>'
                     f'{"<a>x</a>" * (MAX_SOAP_EVENT_BODY_BYTES // 8)}</ctx></rtEvent>')
    response = post(soap, big)
    assert response.status_code == 413
    assert "larger than" in fault(response)[1]
    # the same size is fine for PushEvents (its limit is larger): refused for its ctx only
    batch = push_events([f'<batchEvent type="T" email="a@example.com"><ctx>'
                         f'{"<a>x</a>" * (MAX_SOAP_EVENT_BODY_BYTES // 8)}</ctx></batchEvent>'])
    assert "ctx is larger than" in fault(post(soap, batch, "nms:batchEvent#PushEvents"))[1]
    assert nothing_stored(execution_db)


# --- authentication --------------------------------------------------------------------
@pytest.mark.parametrize(("token", "words"), [
    ("", "Authentication required"),
    ("login/wrong", "Invalid login or password"),
    ("no-such-token", "Invalid session token"),
])
def test_without_valid_credentials_nothing_is_stored(soap, execution_db, token, words):
    response = post(soap, push_event('<rtEvent type="T" email="a@example.com"/>', token))
    assert response.status_code == 500
    assert words in fault(response)[1]
    assert nothing_stored(execution_db)


@pytest.mark.parametrize(("method", "event", "dag"), [
    ("nms:rtEvent#PushEvent", '<rtEvent type="T" email="a@example.com"/>', "rtEventsProcessing"),
    ("nms:batchEvent#PushEvents", '<batchEvent type="T" email="a@example.com"/>',
     "batchEventsProcessing")])
def test_pushing_needs_the_push_right(soap, execution_db, method, event, dag):
    """The rights' refusal as a SOAP Fault (HTTP 500, as SOAP 1.1 and ACC answer every
    fault): nothing stored, the Idempotency-Key left for a caller who may push."""
    body = push_event(event, "viewer/secret") if method.endswith("PushEvent") else \
        push_events([event], "viewer/secret")
    response = post(soap, body, method, **{"Idempotency-Key": "refused-1"})
    assert response.status_code == 500
    code, message, _ = fault(response)
    assert code == "SOAP-ENV:Client"
    assert message == f"Forbidden: pushing {dag[:-len('EventsProcessing')]} events needs the " \
                      f"permission to create DAG runs of {dag}; user 'viewer' does not have it"
    assert nothing_stored(execution_db)
    allowed = post(soap, body.replace("viewer/secret", "login/password"), method,
                   **{"Idempotency-Key": "refused-1"})
    assert len(pl_ids(allowed)) == 1 and "idempotent-replayed" not in allowed.headers


def test_logon_then_push_with_the_session_token_then_logoff(soap, execution_db, sessions):
    logon = envelope("Logon", "<urn:sessiontoken/><urn:strLogin>login</urn:strLogin>"
                              "<urn:strPassword>password</urn:strPassword><urn:elemParameters/>",
                     ("xtk:session", "urn:xtk:session"))
    response = post(soap, logon, "xtk:session#Logon")
    assert response.status_code == 200, response.text
    root = etree.fromstring(response.content)
    token = root.findtext(f"{{{SOAP_ENV}}}Body/{{urn:xtk:session}}LogonResponse/"
                          "{urn:xtk:session}pstrSessionToken")
    assert token == "tok-operator"
    assert len(pl_ids(post(soap, push_event('<rtEvent type="T" email="a@example.com"/>',
                                            token)))) == 1
    # the token also works as a Bearer header or ACC's __sessiontoken cookie
    no_token = push_event('<rtEvent type="T" email="a@example.com"/>', "")
    assert len(pl_ids(post(soap, no_token, Authorization=f"Bearer {token}"))) == 1
    assert len(pl_ids(post(soap, no_token, Cookie=f"__sessiontoken={token}"))) == 1
    logoff = envelope("Logoff", f"<urn:sessiontoken>{token}</urn:sessiontoken>",
                      ("xtk:session", "urn:xtk:session"))
    assert post(soap, logoff, "xtk:session#Logoff").status_code == 200
    assert "Invalid session token" in fault(post(soap, no_token,
                                                 Authorization=f"Bearer {token}"))[1]
    bad = envelope("Logon", "<urn:strLogin>login</urn:strLogin>"
                            "<urn:strPassword>nope</urn:strPassword>",
                   ("xtk:session", "urn:xtk:session"))
    assert "Invalid login or password" in fault(post(soap, bad, "xtk:session#Logon"))[1]
    assert len(rows(execution_db)) == 3


# --- idempotency -----------------------------------------------------------------------
def test_idempotency_key_replays_the_first_answer(soap, execution_db):
    body = push_event('<rtEvent type="T" email="a@example.com"/>')
    first = post(soap, body, **{"Idempotency-Key": "order-1"})
    again = post(soap, body, **{"Idempotency-Key": "order-1"})
    assert pl_ids(first) == pl_ids(again)
    assert again.headers["idempotent-replayed"] == "true"
    assert len(rows(execution_db)) == 1
    other = post(soap, push_event('<rtEvent type="T" email="b@example.com"/>'),
                 **{"Idempotency-Key": "order-1"})
    assert "already used for a different request" in fault(other)[1]
    assert "Idempotency-Key" in fault(post(soap, body, **{"Idempotency-Key": "x" * 300}))[1]
    assert len(rows(execution_db)) == 1


# --- WSDL and a client generated from it -----------------------------------------------
@pytest.mark.parametrize("schema", ["nms:rtEvent", "nms:batchEvent", "xtk:session"])
def test_the_wsdl_needs_a_login_and_points_at_the_router(soap, schema):
    url = f"/nl/jsp/schemawsdl.jsp?schema={schema}"
    assert soap.get(url).status_code == 401
    assert soap.get(url, auth=("login", "wrong")).status_code == 401
    response = soap.get(url, auth=("login", "password"))
    assert response.status_code == 200
    root = etree.fromstring(response.content)
    address = root.find(".//{http://schemas.xmlsoap.org/wsdl/soap/}address")
    assert address.get("location") == "http://testserver/nl/jsp/soaprouter.jsp"
    assert soap.get(f"{url}&__sessiontoken={ADOBE_SESSION_TOKEN}").status_code == 200
    assert soap.get("/nl/jsp/schemawsdl.jsp?schema=nms:delivery",
                    auth=("login", "password")).status_code == 404


def test_zeep_builds_requests_from_the_wsdl_that_the_router_accepts(soap, execution_db,
                                                                     tmp_path):
    wsdls = {}
    for schema in ("nms:rtEvent", "nms:batchEvent"):
        path = tmp_path / f"{schema.replace(':', '_')}.wsdl"
        path.write_bytes(soap.get(f"/nl/jsp/schemawsdl.jsp?schema={schema}",
                                  auth=("login", "password")).content)
        wsdls[schema] = zeep.Client(str(path))
    event = etree.fromstring('<rtEvent type="T" email="a@example.com" wishedChannel="email">'
                             "<ctx><firstName>Ada</firstName></ctx></rtEvent>")
    message = wsdls["nms:rtEvent"].create_message(
        wsdls["nms:rtEvent"].service, "PushEvent", sessiontoken="login/password",
        domEvent={"_value_1": event})
    response = post(soap, etree.tostring(message), "nms:rtEvent#PushEvent")
    (pl_id,) = pl_ids(response)
    answer = wsdls["nms:rtEvent"].service._binding.process_reply(
        wsdls["nms:rtEvent"], wsdls["nms:rtEvent"].service._binding._operations["PushEvent"],
        _Reply(response))
    assert answer == pl_id

    collection = etree.fromstring(
        "<Events>" + "".join(f'<batchEvent type="T" email="u{i}@example.com"/>'
                             for i in range(3)) + "</Events>")
    client = wsdls["nms:batchEvent"]
    message = client.create_message(client.service, "PushEvents",
                                    sessiontoken=ADOBE_SESSION_TOKEN,
                                    domEventCollection={"_value_1": collection})
    response = post(soap, etree.tostring(message), "nms:batchEvent#PushEvents")
    answer = client.service._binding.process_reply(
        client, client.service._binding._operations["PushEvents"], _Reply(response))
    assert answer == pl_ids(response) and len(answer) == 3
    assert len(rows(execution_db, "batch")) == 3


class _Reply:
    """What zeep's binding reads from a ``requests`` response."""

    def __init__(self, response) -> None:
        self.status_code, self.content = response.status_code, response.content
        self.headers, self.encoding = response.headers, "utf-8"


def test_database_down_is_a_server_fault(sessions):
    root = FastAPI()
    root.mount("/nl", create_soap_app(sessions, lambda: "postgresql://postgres@127.0.0.1:1/x",
                                      authorization=RIGHTS))
    response = post(TestClient(root), push_event('<rtEvent type="T" email="a@example.com"/>'))
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    code, message, _ = fault(response)
    assert code == "SOAP-ENV:Server" and "unavailable" in message
