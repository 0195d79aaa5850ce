"""Adobe Campaign Classic's XML events: a hardened parser, the ``<rtEvent>``/``<batchEvent>``
element as a JSON event, and the rule that turns the XML ``<ctx>`` into the JSON ``ctx``.

Parsing uses lxml (libxml2) with every dangerous feature off: no DTD loading, no entity
substitution, no network, no "huge tree" (libxml2's depth and size limits stay on), no
comments or processing instructions kept. A document with a ``<!DOCTYPE`` is refused
outright: SOAP forbids DTDs, and entity declarations are how "billion laughs" and external
entity (file / URL) attacks get in.

The ``ctx`` rule (documented in the README, one table):

- ``<ctx>`` becomes a JSON object; every attribute and every child element is a key (the
  local name, namespaces dropped, ``xsi:*`` attributes ignored), so ACC's
  ``rtEvent.ctx.@firstName`` and ``rtEvent.ctx.firstName`` both become ``{{ firstName }}``;
- an element without attributes or child elements is its text, a string (``""`` if empty;
  XML has no numbers: use ``|int`` / ``|float`` in templates);
- an element with attributes or children is an object by the same rule; text next to
  child elements or attributes goes under the key ``#text``;
- an element name repeated among its siblings becomes a list, in document order (a single
  occurrence stays a plain value);
- an attribute and a child element with the same name are refused (ambiguous).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any

from lxml import etree

from message_center import channel as channels
from message_center.events import EventValidationError

TEXT_KEY = "#text"
XSI_NAMESPACE = "http://www.w3.org/2001/XMLSchema-instance"

EVENT_ELEMENTS = {"rtevent": "rt", "batchevent": "batch"}
"""The event element's name picks the queue, as in ACC: ``<rtEvent>`` real time,
``<batchEvent>`` batch (whichever method carries it). Case-insensitive: Adobe's own pages
also write ``<rtevent>``."""

EVENT_ATTRIBUTES = ("type", "email", "mobilePhone", "wishedChannel", "externalId", "language",
                    "country", "origin", "scheduled", "expiration")
_EVENT_ATTRIBUTES = frozenset(EVENT_ATTRIBUTES)
IGNORED_ATTRIBUTES = frozenset({"emailFormat", "_operation", "xtkschema"})
"""ACC attributes accepted and ignored: ``emailFormat`` (every e-mail is sent as text + HTML
here) and the attributes ACC's own SDKs add to entities."""

def wished_channels() -> dict[str, str]:
    """ACC's ``nms:messageType`` values (0 email, 1 mobile) and labels, case-insensitive:
    each channel states its own (:attr:`message_center.channel.Channel.acc_codes`)."""
    return channels.acc_code_map()


def _accepted_channels() -> str:
    """What wishedChannel takes, channel by channel: its ACC codes and names."""
    described = []
    for channel in channels.all_channels():
        codes = [code if code.isdigit() else repr(code)
                 for code in (*channel.acc_codes, channel.name)]
        said = codes[0] if len(codes) == 1 else f"{', '.join(codes[:-1])} or {codes[-1]}"
        label = channel.label if channel.label.isupper() else channel.label.lower()
        described.append(f"{said} ({label})")
    return ", ".join(described)


class XmlRefused(ValueError):
    """The body is not XML we accept: not well-formed, or carries a DTD."""


_DOCTYPE_MARKERS = tuple("<!DOCTYPE".encode(codec) for codec in ("utf-8", "utf-16-le",
                                                                   "utf-16-be"))
_local = threading.local()


def _parser() -> etree.XMLParser:
    """One parser per thread (lxml parsers must not be shared between threads)."""
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = etree.XMLParser(
            resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
            huge_tree=False, remove_comments=True, remove_pis=True, collect_ids=False)
        _local.parser = parser
    return parser


def parse_xml(body: bytes) -> Any:
    """The root element of ``body``; ``XmlRefused`` for a DTD or malformed XML."""
    no_dtd = XmlRefused("DTDs (<!DOCTYPE ...>) are not allowed in SOAP messages: entity "
                        "declarations could expand without bound or read files")
    if any(marker in body for marker in _DOCTYPE_MARKERS):
        raise no_dtd
    try:
        root = etree.fromstring(body, _parser())
    except etree.XMLSyntaxError as exc:
        raise XmlRefused(f"not well-formed XML: {exc}") from None
    if root.getroottree().docinfo.doctype:  # any encoding the byte check did not see
        raise no_dtd
    return root


def local_name(tag: str) -> str:
    return tag if tag[0] != "{" else tag[tag.index("}") + 1:]


def child_elements(element: Any) -> list[Any]:
    """Element children only (no comments, processing instructions or entity refs)."""
    return [child for child in element if isinstance(child.tag, str)]


# --- ctx ------------------------------------------------------------------------------
class _CtxConflict(ValueError):
    pass


def ctx_from_xml(element: Any) -> dict[str, Any]:
    """The JSON ``ctx`` of a ``<ctx>`` element, by the rule in the module docstring."""
    value = _value(element)
    if isinstance(value, dict):
        return value
    return {TEXT_KEY: value} if value.strip() else {}


_XSI_PREFIX = "{" + XSI_NAMESPACE + "}"


def _path(element: Any) -> str:
    """``ctx/a/b`` of an element inside ``<ctx>`` (for the one error message)."""
    names = []
    while element is not None:
        names.append(local_name(element.tag))
        if names[-1] == "ctx":
            break
        element = element.getparent()
    return "/".join(reversed(names))


def _value(element: Any) -> Any:
    # Hot path (every ctx node of every pushed event): plain loops, no helper calls.
    items = element.items()  # attributes, without building an _Attrib proxy
    if not items and len(element) == 0:
        return element.text or ""
    obj: dict[str, Any] = {}
    for name, value in items:
        if name[0] == "{":
            if name.startswith(_XSI_PREFIX):
                continue
            name = name[name.index("}") + 1:]
        obj[name] = value
    attributes = frozenset(obj) if obj else frozenset()
    repeated: set[str] = set()
    texts = [element.text] if element.text else []
    for child in element:
        if child.tail:
            texts.append(child.tail)
        tag = child.tag
        if not isinstance(tag, str):
            continue
        name = tag if tag[0] != "{" else tag[tag.index("}") + 1:]
        value = _value(child)
        if name in attributes:
            raise _CtxConflict(f"'{name}' is both an attribute and a child element of "
                               f"<{_path(element)}>")
        if name in repeated:
            obj[name].append(value)
        elif name in obj:
            obj[name] = [obj[name], value]
            repeated.add(name)
        else:
            obj[name] = value
    if texts:  # an element with attributes or children: mixed content
        text = "".join(texts).strip()
        if text:  # XML names cannot start with '#': no clash with an attribute or element
            obj[TEXT_KEY] = text
    return obj


# --- events ---------------------------------------------------------------------------
@dataclass(frozen=True)
class XmlEvent:
    """One event element: its queue, where it is (for error messages), and the JSON event
    (camelCase, as ``POST /message-center/v1/rtEvents`` takes it)."""

    kind: str
    path: str
    data: dict[str, Any]


def _error(location: str, msg: str, kind: str) -> dict[str, Any]:
    return {"loc": ["body", location], "field": location, "msg": msg, "type": kind}


def is_event_element(element: Any) -> bool:
    return local_name(element.tag).lower() in EVENT_ELEMENTS


def event_kind(element: Any, path: str) -> str:
    """The queue of an event element; refuses elements that are not events."""
    kind = EVENT_ELEMENTS.get(local_name(element.tag).lower())
    if kind is None:
        raise EventValidationError([_error(
            path, f"<{local_name(element.tag)}> is not an event: expected <rtEvent> "
                  "(real-time queue) or <batchEvent> (batch queue)", "event_element")])
    return kind


def event_from_element(element: Any, path: str) -> XmlEvent:
    """Read one ``<rtEvent>``/``<batchEvent>``; XML-level problems (unknown attribute or
    element, unsupported ``wishedChannel``, ambiguous ``ctx``) raise
    ``EventValidationError`` naming ``path/@attribute``. Field values are checked later by
    ``events.parse_event``/``parse_batch``, as for JSON."""
    kind = event_kind(element, path)
    errors: list[dict[str, Any]] = []
    data: dict[str, Any] = {}
    for name, value in element.items():
        if name[0] == "{" or name in IGNORED_ATTRIBUTES:
            continue  # xsi:type and other namespaced attributes, ACC-only attributes
        where = f"{path}/@{name}"
        if name not in _EVENT_ATTRIBUTES:
            errors.append(_error(where, f"unknown attribute '{name}' (accepted: "
                                        f"{', '.join(EVENT_ATTRIBUTES)})", "extra_forbidden"))
        elif name == "wishedChannel":
            channel = wished_channels().get(value.strip().lower())
            if channel is None and value.strip():
                errors.append(_error(where, f"wishedChannel '{value}' is not supported: use "
                                            f"{_accepted_channels()}", "wished_channel"))
            elif channel is not None:
                data[name] = channel
        elif value != "":  # ACC clients send empty attributes for "not set"
            data[name] = value
    ctx: dict[str, Any] | None = None
    for child in element:
        if not isinstance(child.tag, str):
            continue
        name = local_name(child.tag)
        owner = _address_elements().get(name)
        if owner is not None:  # a channel's address given as an element (not ACC's)
            if owner.address_field in data:
                errors.append(_error(f"{path}/{name}", f"more than one <{name}> element",
                                     "address_repeated"))
            else:
                data[owner.address_field] = owner.address_from_xml(
                    {key: value for key, value in child.items() if key[0] != "{"})
        elif name == "attachments":
            if "attachments" in data:
                errors.append(_error(f"{path}/attachments", "more than one <attachments> "
                                     "element", "attachments_repeated"))
            else:
                data["attachments"] = _attachments(child, f"{path}/attachments", errors)
        elif name != "ctx":
            accepted = ", ".join(f"<{n}>" for n in ("ctx", "attachments",
                                                    *_address_elements()))
            errors.append(_error(f"{path}/{name}", f"unknown element <{name}> in "
                                 f"<{local_name(element.tag)}>: only {accepted} "
                                 "accepted", "extra_forbidden"))
        elif ctx is not None:
            errors.append(_error(f"{path}/ctx", "more than one <ctx> element", "ctx_repeated"))
        else:
            try:
                ctx = ctx_from_xml(child)
            except _CtxConflict as exc:
                errors.append(_error(f"{path}/ctx", f"ctx: {exc}", "ctx_conflict"))
    if errors:
        raise EventValidationError(errors)
    data["ctx"] = ctx if ctx is not None else {}
    return XmlEvent(kind, path, data)


ATTACHMENT_ATTRIBUTES = ("name", "contentType", "url")


def _attachments(element: Any, path: str, errors: list[dict[str, Any]]
                 ) -> list[dict[str, Any]]:
    """``<attachments><attachment name=".." contentType="..">base64</attachment>
    <attachment name=".." url=".."/></attachments>`` as the JSON ``attachments`` (the
    content's line breaks are allowed: base64 as MIME writes it)."""
    files: list[dict[str, Any]] = []
    for index, child in enumerate(child_elements(element)):
        where = f"{path}/attachment[{index + 1}]"
        if local_name(child.tag) != "attachment":
            errors.append(_error(where, "only <attachment> elements are accepted in "
                                        "<attachments>", "extra_forbidden"))
            continue
        item: dict[str, Any] = {}
        for name, value in child.items():
            if name[0] == "{":
                continue
            if name not in ATTACHMENT_ATTRIBUTES:
                errors.append(_error(f"{where}/@{name}", f"unknown attribute '{name}' "
                                     f"(accepted: {', '.join(ATTACHMENT_ATTRIBUTES)})",
                                     "extra_forbidden"))
            elif value != "":
                item[name] = value
        content = (child.text or "").strip()
        if content:
            item["content"] = content
        files.append(item)
    return files


def _address_elements() -> dict[str, channels.Channel]:
    """The channels whose address is an element of the event (``<pushSubscription>``)."""
    return {c.xml_element: c for c in channels.all_channels() if c.xml_element}


_FIELD = re.compile(r"^(?:events\[\d+\]\.?)?(?P<field>[A-Za-z]+)?")


def xml_location(event: XmlEvent, field: str) -> str:
    """Where a JSON validation error (field ``email``, ``events[3].ctx``, ...) is in XML."""
    match = _FIELD.match(field)
    name = match.group("field") if match else None
    if name in EVENT_ATTRIBUTES:
        return f"{event.path}/@{name}"
    if name == "ctx":
        return f"{event.path}/ctx"
    if name == "attachments":
        found = re.search(r"attachments\[(\d+)\]", field)
        return (f"{event.path}/attachments/attachment[{int(found.group(1)) + 1}]" if found
                else f"{event.path}/attachments")
    owner = channels.by_address_field(name) if name else None
    if owner is not None and owner.xml_element:
        return f"{event.path}/{owner.xml_location(field)}"
    return event.path
