"""Adobe Campaign Classic's SOAP router for the Message Center: ``PushEvent``/``PushEvents``
of ``nms:rtEvent`` and ``nms:batchEvent``, ``Logon``/``Logoff`` of ``xtk:session``, and the
WSDLs, at ACC's own paths (the Airflow plugin mounts this app under ``/nl``):

- ``POST /nl/jsp/soaprouter.jsp`` — SOAP 1.1, ``SOAPAction: nms:rtEvent#PushEvent`` etc.
- ``GET /nl/jsp/schemawsdl.jsp?schema=nms:rtEvent`` (``nms:batchEvent``, ``xtk:session``).

Events go through the JSON push API's rules and write path: each ``<rtEvent>`` /
``<batchEvent>`` becomes the JSON event (``message_center.acc_xml``), is validated by
``events.parse_event``/``parse_batch`` and stored by ``pushing.store_events``. Any problem is
a SOAP Fault naming the XML attribute (``rtEvent/@email: ...``) and stores nothing; a
``PushEvents`` collection is all or nothing. Success answers are ACC's:
``<urn:PushEventResponse><plId xsi:type="xsd:long">ID</plId>`` (``PushEvents``: one ``plId``
per event, in order).

Authentication is ACC's, mapped onto Airflow's users by ``sessions.Sessions``: the
``<sessiontoken>`` holds ``login/password`` or a session token from ``xtk:session#Logon``
(an Airflow JWT); an ``Authorization: Bearer`` header or a ``__sessiontoken`` cookie work too.
Rights are the JSON push API's (``Authorization.check_push``, asked before anything is
stored or the Idempotency-Key is claimed); a refusal is a SOAP Fault whose faultstring is the
JSON API's 403 detail, naming the missing permission.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import Response
from lxml import etree
from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool

from message_center import events
from message_center.acc_xml import (
    EVENT_ELEMENTS,
    XmlEvent,
    XmlRefused,
    child_elements,
    event_from_element,
    is_event_element,
    local_name,
    parse_xml,
    xml_location,
)
from message_center.api.app import Authorization, read_body
from message_center.api.database import RETRY_AFTER, execution_engine
from message_center.api.pushing import IdempotencyConflict, store_events
from message_center.api.sessions import SessionRefused, Sessions
from message_center.api.wsdl import SCHEMAS, namespace_of, wsdl
from message_center.events import MAX_BATCH_EVENTS, EventValidationError

log = logging.getLogger(__name__)

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12_ENV = "http://www.w3.org/2003/05/soap-envelope"
SOAP_ENCODING = "http://schemas.xmlsoap.org/soap/encoding/"
XSD = "http://www.w3.org/2001/XMLSchema"
XSI = "http://www.w3.org/2001/XMLSchema-instance"

MAX_SOAP_EVENT_BODY_BYTES = 1024 * 1024
"""Largest body of ``PushEvent``, ``Logon``, ``Logoff`` (413 before parsing)."""
MAX_SOAP_BATCH_BODY_BYTES = 32 * 1024 * 1024
"""Largest body of ``PushEvents`` (picked from the ``SOAPAction`` header)."""

METHODS = {
    ("nms:rtEvent", "PushEvent"), ("nms:rtEvent", "PushEvents"),
    ("nms:batchEvent", "PushEvent"), ("nms:batchEvent", "PushEvents"),
    ("xtk:session", "Logon"), ("xtk:session", "Logoff"),
}
SERVICES = {namespace_of(schema): schema for schema in SCHEMAS}
SESSION_COOKIE = "__sessiontoken"
XML_CONTENT_TYPE = "text/xml; charset=utf-8"

_NOT_XML_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


class SoapFault(Exception):
    """Answered as a SOAP 1.1 Fault (HTTP 500 as SOAP 1.1 says, unless ``status``)."""

    def __init__(self, message: str, detail: str | None = None, *, code: str = "Client",
                 status: int = 500, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message, self.detail, self.code = message, detail, code
        self.status, self.headers = status, headers or {}


def _clean(text: str) -> str:
    return _NOT_XML_CHARS.sub("?", text)


def fault_xml(fault: SoapFault) -> bytes:
    """ACC's Fault: ``faultcode``, ``faultstring`` and ``detail`` as ``xsd:string``."""
    envelope = etree.Element(f"{{{SOAP_ENV}}}Envelope",
                             nsmap={"SOAP-ENV": SOAP_ENV, "xsd": XSD, "xsi": XSI})
    body = etree.SubElement(envelope, f"{{{SOAP_ENV}}}Body")
    node = etree.SubElement(body, f"{{{SOAP_ENV}}}Fault")
    etree.SubElement(node, "faultcode").text = f"SOAP-ENV:{fault.code}"
    string = etree.SubElement(node, "faultstring", {f"{{{XSI}}}type": "xsd:string"})
    string.text = _clean(fault.message)
    if fault.detail:
        detail = etree.SubElement(node, "detail", {f"{{{XSI}}}type": "xsd:string"})
        detail.text = _clean(fault.detail)
    return etree.tostring(envelope, xml_declaration=True, encoding="utf-8")


def _envelope(content: str) -> bytes:
    return (
        "<?xml version='1.0' encoding='utf-8'?>\n"
        f'<SOAP-ENV:Envelope xmlns:xsd="{XSD}" xmlns:xsi="{XSI}" '
        f'xmlns:ns="http://xml.apache.org/xml-soap" xmlns:SOAP-ENV="{SOAP_ENV}">'
        f"<SOAP-ENV:Body>{content}</SOAP-ENV:Body></SOAP-ENV:Envelope>"
    ).encode()


def push_response_xml(service: str, method: str, ids: list[int]) -> bytes:
    """``<urn:PushEventResponse><plId xsi:type="xsd:long">ID</plId>`` as ACC answers."""
    ids = ids[:1] if method == "PushEvent" else ids
    pl_ids = "".join(f'<plId xsi:type="xsd:long">{int(i)}</plId>' for i in ids)
    return _envelope(
        f'<urn:{method}Response SOAP-ENV:encodingStyle="{SOAP_ENCODING}" '
        f'xmlns:urn="{namespace_of(service)}">{pl_ids}</urn:{method}Response>')


def logon_response_xml(token: str, login: str) -> bytes:
    info = etree.Element("sessionInfo")
    etree.SubElement(info, "userInfo", {"login": _clean(login)})
    return _envelope(
        f"<LogonResponse xmlns='urn:xtk:session' SOAP-ENV:encodingStyle='{SOAP_ENCODING}'>"
        f"<pstrSessionToken xsi:type='xsd:string'>{_escape(token)}</pstrSessionToken>"
        f"<pSessionInfo xsi:type='ns:Element' SOAP-ENV:encodingStyle="
        f"'http://xml.apache.org/xml-soap/literalxml'>{etree.tostring(info).decode()}"
        f"</pSessionInfo>"
        f"<pstrSecurityToken xsi:type='xsd:string'>{_escape(token)}</pstrSecurityToken>"
        f"</LogonResponse>")


def _escape(text: str) -> str:
    return (_clean(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))


@dataclass(frozen=True)
class SoapCall:
    service: str
    method: str
    params: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.service}#{self.method}"

    def text(self, name: str) -> str:
        node = self.params.get(name)
        return "" if node is None else (node.text or "").strip()


def soap_action(request: Request) -> tuple[str, str] | None:
    """``(service, method)`` from the ``SOAPAction`` header (quoted or not), if any."""
    raw = request.headers.get("soapaction", "").strip().strip('"').strip()
    if not raw:
        return None
    service, _, method = raw.partition("#")
    return service, method


def parse_call(body: bytes, action: tuple[str, str] | None) -> SoapCall:
    """The method and its parameters (by local name) from a SOAP 1.1 envelope."""
    try:
        root = parse_xml(body)
    except XmlRefused as exc:
        raise SoapFault("The XML SOAP message is invalid.", str(exc)) from None
    if root.tag == f"{{{SOAP12_ENV}}}Envelope":
        raise SoapFault("SOAP 1.2 is not supported: send a SOAP 1.1 envelope "
                        f"({SOAP_ENV}), as Adobe Campaign clients do.")
    if root.tag != f"{{{SOAP_ENV}}}Envelope":
        raise SoapFault("The XML SOAP message is invalid.",
                        f"the root element must be a SOAP 1.1 Envelope; got <{root.tag}>")
    body_node = next((c for c in child_elements(root) if c.tag == f"{{{SOAP_ENV}}}Body"), None)
    method_node = None if body_node is None else next(iter(child_elements(body_node)), None)
    if method_node is None:
        raise SoapFault("The XML SOAP message is invalid.",
                        "the Envelope has no Body, or the Body names no method")
    namespace, _, method = method_node.tag.rpartition("}")
    service = SERVICES.get(namespace.lstrip("{"))
    if service is None and not namespace and action is not None:
        service = action[0]  # <PushEvent> without a namespace: the SOAPAction tells
    if service is None:
        raise SoapFault(f"Unknown service namespace '{namespace.lstrip('{')}' of method "
                        f"'{method}'", "expected one of " + ", ".join(sorted(SERVICES)))
    if action is not None and action != (service, method):
        raise SoapFault(f"SOAPAction '{action[0]}#{action[1]}' does not match the method "
                        f"in the Body ('{service}#{method}').")
    if (service, method) not in METHODS:
        raise SoapFault(f"Method '{method}' of service '{service}' not found.",
                        "this server implements " + ", ".join(
                            f"{s}#{m}" for s, m in sorted(METHODS)))
    params: dict[str, Any] = {}
    for child in child_elements(method_node):
        name = local_name(child.tag)
        if name in params:
            raise SoapFault(f"Error while reading parameters of method '{method}' of "
                            f"service '{service}'.", f"parameter <{name}> is given twice")
        params[name] = child
    return SoapCall(service, method, params)


def _event_nodes(call: SoapCall) -> list[tuple[Any, str]]:
    """The event elements of a PushEvent / PushEvents call, with their XML paths."""
    reading = f"Error while reading parameters of method '{call.method}' of service " \
              f"'{call.service}'."
    if call.method == "PushEvent":
        holder = call.params.get("domEvent")
        nodes = [] if holder is None else child_elements(holder)
        if len(nodes) != 1:
            raise SoapFault(reading, "<domEvent> must hold exactly one <rtEvent> or "
                                     f"<batchEvent> element; got {len(nodes)}")
        return [(nodes[0], local_name(nodes[0].tag))]
    holder = call.params.get("domEventCollection")
    if holder is None:
        raise SoapFault(reading, "missing parameter <domEventCollection>")
    nodes, prefix = child_elements(holder), "domEventCollection"
    if len(nodes) == 1 and not is_event_element(nodes[0]):
        prefix = local_name(nodes[0].tag)  # ACC's wrapper element, e.g. <Events>
        nodes = child_elements(nodes[0])
    if not 1 <= len(nodes) <= MAX_BATCH_EVENTS:
        raise SoapFault(reading, f"<domEventCollection> must hold 1 to {MAX_BATCH_EVENTS} "
                                 f"events (in one wrapper element such as <Events>); got "
                                 f"{len(nodes)}")
    return [(node, f"{prefix}/{local_name(node.tag)}[{position}]")
            for position, node in enumerate(nodes, start=1)]


def _invalid(call: SoapCall, problems: list[str]) -> SoapFault:
    more = f" (and {len(problems) - 1} more, see detail)" if len(problems) > 1 else ""
    return SoapFault(f"Error while reading parameters of method '{call.method}' of service "
                     f"'{call.service}': {problems[0]}{more}", "\n".join(problems))


def validate_events(call: SoapCall, nodes: list[tuple[Any, str]]) -> list[tuple[XmlEvent, Any]]:
    """XML events -> validated ``EventIn``s, all or nothing. Every problem is reported, in
    document order, as ``<xml location>: <message>``; an event with an XML-level problem
    (unknown attribute, unsupported wishedChannel, ...) is not validated further."""
    located: list[XmlEvent | None] = []
    problems: list[tuple[int, str]] = []
    for position, (node, path) in enumerate(nodes):
        try:
            located.append(event_from_element(node, path))
        except EventValidationError as exc:
            located.append(None)
            problems.extend((position, f"{e['field']}: {e['msg']}") for e in exc.errors)
    good = [(position, event) for position, event in enumerate(located) if event is not None]
    parsed: list[Any] = []
    if good:
        try:
            if call.method == "PushEvent":
                parsed = [events.parse_event(good[0][1].data)]
            else:
                parsed = events.parse_batch({"events": [event.data for _, event in good]})
        except EventValidationError as exc:
            for error in exc.errors:
                position, event = good[error.get("index", 0)]
                problems.append((position, f"{xml_location(event, str(error['field']))}: "
                                           f"{error['msg']}"))
    if problems:
        problems.sort(key=lambda problem: problem[0])
        raise _invalid(call, [line for _, line in problems])
    return [(event, entry) for (_, event), entry in zip(good, parsed, strict=True)]


def create_soap_app(sessions: Sessions, database_url: Callable[[], str], *,
                    authorization: Authorization) -> FastAPI:
    """The SOAP router and WSDLs; mount it under ``/nl``. ``sessions`` authenticates ACC's
    logins and session tokens, ``authorization.check_push`` says who may push."""
    app = FastAPI(title="Message Center: Adobe Campaign SOAP API", docs_url=None,
                  redoc_url=None, openapi_url=None)

    engine = execution_engine(database_url)

    def token_from_request(request: Request) -> str:
        authorization = request.headers.get("authorization", "")
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
        return request.cookies.get(SESSION_COOKIE, "").strip()

    async def user_for(request: Request, raw: str) -> Any:
        """``login/password`` or a session token (from Logon) -> the Airflow user."""
        raw = raw or token_from_request(request)
        if not raw:
            raise SessionRefused("Authentication required: put 'login/password' or a "
                                 "session token from xtk:session#Logon in <sessiontoken>")
        if "/" in raw:
            login, _, password = raw.partition("/")
            raw = await sessions.logon(request, login, password)
        return await sessions.user(request, raw)

    def store(call: SoapCall, nodes: list[tuple[Any, str]], key: str | None,
              user: Any = None) -> tuple[list[int], bool]:
        validated = validate_events(call, nodes)
        try:
            _, body, replayed = store_events(
                engine(), [(xml_event.kind, event) for xml_event, event in validated],
                answer=lambda ids: {"ids": ids}, key=key, endpoint=f"soap:{call.name}",
                request=[[xml_event.kind, xml_event.data] for xml_event, _ in validated],
                indexed=True, sandbox=authorization.sandboxes(user))
        except IdempotencyConflict as exc:
            raise SoapFault(str(exc), "send a new Idempotency-Key for a new request") \
                from None
        except EventValidationError as exc:  # ctx does not fit the published template
            raise _invalid(call, [
                f"{xml_location(validated[error['index']][0], str(error['field']))}: "
                f"{error['msg']}" for error in exc.errors]) from None
        return list(body["ids"]), replayed

    async def push(request: Request, call: SoapCall) -> tuple[bytes, dict[str, str]]:
        user = await user_for(request, call.text("sessiontoken"))
        nodes = _event_nodes(call)
        key = request.headers.get("idempotency-key")
        if key is not None:
            try:
                events.check_idempotency_key(key)
            except EventValidationError as exc:
                raise _invalid(call, [f"{e['field']}: {e['msg']}" for e in exc.errors]) \
                    from None
        # non-event elements are reported with every other problem by validate_events
        kinds = {EVENT_ELEMENTS.get(local_name(node.tag).lower()) for node, _ in nodes}
        for kind in sorted(kinds - {None}):
            try:
                await run_in_threadpool(authorization.check_push, user, kind)
            except HTTPException as exc:
                if exc.status_code != 403:
                    raise
                raise SoapFault(str(exc.detail), "Rights are Airflow's: the same permission "
                                                 "as pushing through the JSON push API.") \
                    from None
        ids, replayed = await run_in_threadpool(store, call, nodes, key, user)
        headers = {"Idempotent-Replayed": "true"} if replayed else {}
        return push_response_xml(call.service, call.method, ids), headers

    async def logon(request: Request, call: SoapCall) -> bytes:
        login = call.text("strLogin")
        node = call.params.get("strPassword")
        password = "" if node is None else node.text or ""
        if not login or not password:
            raise SessionRefused("Invalid login or password. Connection denied.")
        token = await sessions.logon(request, login, password)
        return logon_response_xml(token, login)

    async def logoff(request: Request, call: SoapCall) -> bytes:
        token = call.text("sessiontoken") or token_from_request(request)
        if not token:
            raise SessionRefused("No session token to log off")
        await sessions.logoff(request, token)
        return _envelope("<LogoffResponse xmlns='urn:xtk:session' "
                         f"SOAP-ENV:encodingStyle='{SOAP_ENCODING}'/>")

    @app.post("/jsp/soaprouter.jsp", include_in_schema=False)
    async def soaprouter(request: Request) -> Response:
        headers: dict[str, str] = {}
        try:
            action = soap_action(request)
            limit = (MAX_SOAP_BATCH_BODY_BYTES if action and action[1] == "PushEvents"
                     else MAX_SOAP_EVENT_BODY_BYTES)
            try:
                body = await read_body(request, limit)
            except HTTPException as exc:
                raise SoapFault(str(exc.detail), status=exc.status_code) from None
            call = await run_in_threadpool(parse_call, body, action)
            if call.method == "Logon":
                content = await logon(request, call)
            elif call.method == "Logoff":
                content = await logoff(request, call)
            else:
                content, headers = await push(request, call)
        except SessionRefused as exc:
            return _fault(SoapFault(str(exc), "Authentication is Airflow's: use an Airflow "
                                              "user or a token of one."))
        except SoapFault as fault:
            return _fault(fault)
        except OperationalError:
            log.exception("SOAP request failed: execution database unavailable")
            return _fault(SoapFault("The execution database is unavailable; retry later.",
                                    code="Server", status=503, headers=RETRY_AFTER))
        except HTTPException as exc:  # e.g. the mc_execution connection is not defined
            return _fault(SoapFault(str(exc.detail), code="Server" if exc.status_code >= 500
                                    else "Client", status=exc.status_code))
        except Exception:
            log.exception("SOAP request failed")
            return _fault(SoapFault("Internal error; see the API server log.", code="Server"))
        return Response(content, media_type=XML_CONTENT_TYPE, headers=headers)

    @app.get("/jsp/schemawsdl.jsp", include_in_schema=False)
    async def schema_wsdl(
        request: Request, schema: str = Query(...),
        session_token: str = Query("", alias="__sessiontoken"),
    ) -> Response:
        """The WSDL of ``schema``; needs a login like ACC (Bearer token, ``__sessiontoken``
        cookie or parameter, or HTTP Basic with an Airflow user's login and password)."""
        if schema not in SCHEMAS:
            return Response(f"Unknown schema '{schema}'; this server describes "
                            f"{', '.join(SCHEMAS)}.\n", status_code=404, media_type="text/plain")
        try:
            await user_for(request, session_token.strip() or _basic(request))
        except SessionRefused as exc:
            return Response(f"{exc}\n", status_code=401, media_type="text/plain",
                            headers={"WWW-Authenticate": 'Basic realm="Message Center"'})
        location = request.url.replace(
            path=request.url.path.rsplit("/", 1)[0] + "/soaprouter.jsp", query="")
        return Response(wsdl(schema, str(location)), media_type=XML_CONTENT_TYPE)

    return app


def _basic(request: Request) -> str:
    """HTTP Basic credentials as ``login/password`` (how SOAP tools fetch a WSDL)."""
    import base64
    import binascii

    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return ""
    try:
        login, sep, password = base64.b64decode(encoded.strip()).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return ""
    return f"{login}/{password}" if sep and login and "/" not in login else ""


def _fault(fault: SoapFault) -> Response:
    return Response(fault_xml(fault), status_code=fault.status, media_type=XML_CONTENT_TYPE,
                    headers=fault.headers)
