"""E-mail attachments declared by a template: a static file published with the template
version, a PDF generated per event from an HTML template (WeasyPrint), an iCalendar
invitation generated per event (``icalendar``; also sent as a ``text/calendar``
alternative so that mail clients offer "Add to calendar"). File names are templates.

Only the e-mail channel uses this module (the template checks reach it through the
channel interface: :meth:`EmailChannel.parse_extra_field`). Limits and safety:

* per message (default :data:`DEFAULT_MAX_MESSAGE_BYTES`, ``max_message_bytes`` per
  template), per file (:data:`DEFAULT_MAX_FILE_BYTES`) and a count (:data:`MAX_FILES`);
* content types from an allow-list (:data:`ALLOWED_TYPES`): executables and scripts are
  refused by type, by file-name extension and by their first bytes, and the declared type
  of a static file is checked against its content (:func:`content_problem`);
* a PDF is rendered with no network access: WeasyPrint asks for every
  URL in the HTML (images, stylesheets) through :func:`no_network_fetcher`, which only
  serves ``data:`` URLs (a template cannot make the server fetch anything).
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import requests

from message_center.attachment_rules import (  # one set of rules (re-exported)
    ALLOWED_TYPES,
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_MESSAGE_BYTES,
    MAX_FILES,
    MAX_NAME_CHARS,
    REFUSED_EXTENSIONS,
    content_problem,
    file_name_problem,
    parse_from_event,
)
from message_center.attachment_rules import guess_type as _guess_type
from message_center.delivery.webpush import PeerRefused, guarded_session
from message_center.net_guard import ATTACHMENT_ALLOWED_HOSTS, HostList, UrlRefused, check_url
from message_center.rendering import RenderError, check_syntax, render_part

__all__ = ["ALLOWED_TYPES", "DEFAULT_MAX_FILE_BYTES", "DEFAULT_MAX_MESSAGE_BYTES", "MAX_FILES",
           "MAX_NAME_CHARS",
           "REFUSED_EXTENSIONS", "Attachment", "content_problem", "parse_declaration",
           "render_attachments", "summary"]

#: The iCalendar event fields a template may set (each a template over ctx).
ICAL_FIELDS = ("summary", "start", "end", "location", "description", "organizer")
KINDS = ("file", "pdf", "ical")


@dataclass(frozen=True)
class Attachment:
    """One rendered attachment, as it goes into the message."""

    name: str
    content_type: str
    data: bytes
    #: Also sent as an alternative body part (``text/calendar; method=REQUEST``).
    alternative: bool = False

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


# --- the template's declaration ---------------------------------------------------------
Problems = list[tuple[str, str]]


def parse_declaration(raw: Any, base_dir: Path) -> tuple[dict[str, Any] | None, Problems]:
    """The template's ``attachments:`` as stored with the version (static files read from
    ``base_dir`` and kept as base64 with their hash), and the problems found as
    ``(field, message)``. ``raw``: a list of items, or ``{max_message_bytes, files,
    from_event}`` (``from_event``: events may bring files, within these limits)."""
    problems: Problems = []
    limit = DEFAULT_MAX_MESSAGE_BYTES
    items = raw
    from_event = None
    if isinstance(raw, Mapping):
        unknown = set(raw) - {"files", "max_message_bytes", "from_event"}
        for key in sorted(unknown, key=str):
            problems.append((f"attachments.{key}", "unknown field (allowed: files, "
                             "max_message_bytes, from_event)"))
        if "from_event" in raw:
            from_event, found = parse_from_event(raw["from_event"])
            problems.extend(found)
        limit = raw.get("max_message_bytes", limit)
        if not isinstance(limit, int) or isinstance(limit, bool) or not (
                0 < limit <= DEFAULT_MAX_MESSAGE_BYTES * 5):
            problems.append(("attachments.max_message_bytes",
                             f"must be a number of bytes from 1 to "
                             f"{DEFAULT_MAX_MESSAGE_BYTES * 5}"))
            limit = DEFAULT_MAX_MESSAGE_BYTES
        items = raw.get("files", [] if "from_event" in raw else None)
    if not isinstance(items, list) or not (items or from_event or problems):
        problems.append(("attachments", "must be a list of attachments, each with one of "
                         f"{', '.join(KINDS)} (or a mapping with files, "
                         "max_message_bytes and from_event)"))
        return None, problems
    if len(items) > MAX_FILES:
        problems.append(("attachments", f"at most {MAX_FILES} attachments"))
    files: list[dict[str, Any]] = []
    total = 0
    for index, item in enumerate(items):
        where = f"attachments[{index}]"
        parsed = _parse_item(item, where, base_dir, problems)
        if parsed is not None:
            total += parsed.get("size", 0)
            files.append(parsed)
    if total > limit:
        problems.append(("attachments", f"the static files take {total} bytes, more than "
                         f"the {limit} bytes allowed per message"))
    if problems:
        return None, problems
    declared: dict[str, Any] = {"files": files, "max_message_bytes": limit}
    if from_event is not None:
        declared["from_event"] = from_event
    return declared, []


def _parse_item(item: Any, where: str, base_dir: Path,
                problems: Problems) -> dict[str, Any] | None:
    if not isinstance(item, Mapping):
        problems.append((where, f"must be a mapping with one of {', '.join(KINDS)}"))
        return None
    kinds = [kind for kind in KINDS if kind in item]
    allowed = {"name", "content_type", *KINDS}
    for key in sorted(set(item) - allowed, key=str):
        problems.append((f"{where}.{key}",
                         f"unknown field (allowed: {', '.join(sorted(allowed))})"))
    if len(kinds) != 1:
        problems.append((where, f"needs exactly one of {', '.join(KINDS)}"))
        return None
    kind = kinds[0]
    name = item.get("name")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        problems.append((f"{where}.name", "must be text (a file name; a template)"))
        return None
    if name is not None:
        try:
            check_syntax(name)
        except RenderError as exc:
            problems.append((f"{where}.name", f"template syntax error: {exc}"))
            return None
    if kind == "file":
        return _static_file(item, where, name, base_dir, problems)
    if name is None:
        problems.append((f"{where}.name", f"required for a generated attachment ({kind})"))
        return None
    if kind == "pdf":
        html = item["pdf"]
        if not isinstance(html, str) or not html.strip():
            problems.append((f"{where}.pdf", "must be the HTML to render as a PDF"))
            return None
        try:
            check_syntax(html, html=True)
        except RenderError as exc:
            problems.append((f"{where}.pdf", f"template syntax error: {exc}"))
            return None
        return {"kind": "pdf", "name": name, "content_type": "application/pdf",
                "html": html}
    event = item["ical"]
    if not isinstance(event, Mapping) or not {"summary", "start"} <= set(event):
        problems.append((f"{where}.ical", "must be a mapping with at least summary and "
                         f"start (fields: {', '.join(ICAL_FIELDS)})"))
        return None
    for key, value in event.items():
        if key not in ICAL_FIELDS:
            problems.append((f"{where}.ical.{key}",
                             f"unknown field (allowed: {', '.join(ICAL_FIELDS)})"))
        elif not isinstance(value, str):
            problems.append((f"{where}.ical.{key}", "must be text (a template; quote it)"))
        else:
            try:
                check_syntax(value)
            except RenderError as exc:
                problems.append((f"{where}.ical.{key}", f"template syntax error: {exc}"))
    return {"kind": "ical", "name": name, "content_type": "text/calendar",
            "ical": {key: str(value) for key, value in event.items()}}


def _static_file(item: Mapping[str, Any], where: str, name: str | None, base_dir: Path,
                 problems: Problems) -> dict[str, Any] | None:
    relative = item["file"]
    if not isinstance(relative, str) or not relative.strip():
        problems.append((f"{where}.file", "must be a path next to the template file"))
        return None
    path = (base_dir / relative).resolve()
    if not path.is_relative_to(base_dir.resolve()):
        problems.append((f"{where}.file", f"{relative!r} is outside the template folder"))
        return None
    try:
        data = path.read_bytes()
    except OSError as exc:
        problems.append((f"{where}.file", f"cannot read {relative!r}: {exc.strerror or exc}"))
        return None
    name = name or path.name
    content_type = item.get("content_type") or _guess_type(name)
    if not isinstance(content_type, str):
        problems.append((f"{where}.content_type", f"cannot tell the type of {name!r}; "
                         "give content_type"))
        return None
    if len(data) > DEFAULT_MAX_FILE_BYTES:
        problems.append((f"{where}.file", f"{relative!r} is {len(data)} bytes, more than "
                         f"{DEFAULT_MAX_FILE_BYTES}"))
        return None
    problem = content_problem(path.name if "{" in name else name, content_type, data)
    if problem is not None:
        problems.append((f"{where}.file", problem))
        return None
    return {"kind": "file", "name": name, "content_type": content_type,
            "content": base64.b64encode(data).decode("ascii"), "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


# --- per message ------------------------------------------------------------------------
def render_attachments(declaration: Mapping[str, Any] | None, variables: dict[str, Any], *,
                       uid: str, recipient: str | None = None) -> list[Attachment]:
    """The attachments of one message; a :class:`RenderError` names the attachment that
    cannot be made (the delivery fails the message with it, like a body that does not
    render). ``uid``: the calendar event's UID (stable across retries of one message)."""
    if not declaration:
        return []
    out: list[Attachment] = []
    total = 0
    limit = int(declaration.get("max_message_bytes") or DEFAULT_MAX_MESSAGE_BYTES)
    for index, item in enumerate(declaration.get("files") or ()):
        where = f"attachments[{index}]"
        name = _file_name(render_part(item["name"], variables, part=f"{where}.name") or "",
                          where)
        if item["kind"] == "file":
            attachment = Attachment(name, item["content_type"],
                                    base64.b64decode(item["content"]))
        elif item["kind"] == "pdf":
            html = render_part(item["html"], variables, html=True, part=f"{where}.pdf")
            attachment = Attachment(name, "application/pdf", render_pdf(html or "", where))
        else:
            attachment = Attachment(name, "text/calendar", render_ical(
                item["ical"], variables, uid=f"{uid}-{index}", attendee=recipient,
                where=where), alternative=True)
        problem = content_problem(attachment.name, attachment.content_type, attachment.data)
        if problem is not None:
            raise RenderError(f"{where}: {problem}")
        if len(attachment.data) > DEFAULT_MAX_FILE_BYTES:
            raise RenderError(f"{where} ({name}) is {len(attachment.data)} bytes, more than "
                              f"{DEFAULT_MAX_FILE_BYTES}")
        total += len(attachment.data)
        if total > limit:
            raise RenderError(f"the attachments take more than the {limit} bytes allowed "
                              f"per message (at {where}, {name})")
        out.append(attachment)
    return out


def _file_name(name: str, where: str) -> str:
    name = name.strip()
    problem = file_name_problem(name)
    if problem is not None:
        raise RenderError(f"{where}.name: {problem}")
    return name


def no_network_fetcher() -> Any:
    """WeasyPrint's URL fetcher for attachments: ``data:`` URLs only, never the network
    or the file system (the HTML is a template over event data), no redirects."""
    from weasyprint.urls import URLFetcher  # heavy: only for PDFs

    return URLFetcher(allowed_protocols=("data",), allow_redirects=False, timeout=5)


def render_pdf(html: str, where: str = "attachments") -> bytes:
    """The HTML as a PDF (WeasyPrint). Where the system's Pango is missing WeasyPrint
    cannot load: that is said, naming the attachment."""
    try:
        from weasyprint import HTML  # loads Pango: only for PDFs
    except OSError as exc:
        raise RenderError(f"{where}: PDF attachments need WeasyPrint's system libraries "
                          f"(Pango; Debian: apt-get install libpango-1.0-0 "
                          f"libpangoft2-1.0-0): {exc}") from None
    try:
        return bytes(HTML(string=html, url_fetcher=no_network_fetcher()).write_pdf())
    except Exception as exc:  # WeasyPrint raises many kinds
        raise RenderError(f"{where}: the PDF cannot be made: {type(exc).__name__}: "
                          f"{exc}") from None


def _when(value: str, field: str, where: str) -> datetime | date:
    try:
        if len(value) == 10:
            return date.fromisoformat(value)
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise RenderError(f"{where}.ical.{field}: {value!r} is not an ISO date or time "
                          "(2026-05-01 or 2026-05-01T18:30:00Z)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def render_ical(fields: Mapping[str, str], variables: dict[str, Any], *, uid: str,
                attendee: str | None = None, where: str = "attachments") -> bytes:
    """An iCalendar invitation (``METHOD:REQUEST``, one ``VEVENT``) from the template's
    fields rendered over the event."""
    from icalendar import Calendar, Event, vCalAddress

    values = {key: (render_part(source, variables, part=f"{where}.ical.{key}") or "").strip()
              for key, source in fields.items()}
    calendar = Calendar()
    calendar.add("prodid", "-//Message Center//Transactional messages//EN")
    calendar.add("version", "2.0")
    calendar.add("method", "REQUEST")
    event = Event()
    event.add("uid", uid)
    event.add("dtstamp", datetime.now(UTC))
    event.add("summary", values["summary"])
    event.add("dtstart", _when(values["start"], "start", where))
    if values.get("end"):
        event.add("dtend", _when(values["end"], "end", where))
    for key in ("location", "description"):
        if values.get(key):
            event.add(key, values[key])
    if values.get("organizer"):
        event.add("organizer", vCalAddress(f"mailto:{values['organizer']}"))
    if attendee:
        event.add("attendee", vCalAddress(f"mailto:{attendee}"))
    calendar.add_component(event)
    return bytes(calendar.to_ical())


def summary(declaration: Mapping[str, Any] | None) -> Sequence[dict[str, Any]]:
    """What a preview or a lookup lists of a template's attachments (no content)."""
    return [{"kind": item["kind"], "name": item["name"], "contentType": item["content_type"],
             **({"size": item["size"], "sha256": item["sha256"]} if item["kind"] == "file"
                else {})}
            for item in (declaration or {}).get("files") or ()]


# --- attachments given by the event ------------------------------------------------------
FETCH_SECONDS = 10.0
"""Longest time fetching one URL attachment may take (connect, headers and body)."""


class EventFileError(Exception):
    """An event's attachment cannot go out now. ``temporary``: the URL could not be
    fetched this time (retried like a soft delivery error); otherwise never."""

    def __init__(self, message: str, *, temporary: bool) -> None:
        super().__init__(message)
        self.temporary = temporary


def event_attachments(row: Mapping[str, Any], already: int, *,
                      fetch: Any) -> list[Attachment]:
    """The files the event brought (``row``: ``event_files``, their metadata as pushed,
    ``event_file_contents``, the stored bytes by position) within the template's limits;
    ``already``: bytes the template's own attachments take in this message. URL files are
    fetched with ``fetch(url, max_bytes)``. Raises :class:`EventFileError` naming the
    attachment."""
    files = row.get("event_files") or ()
    if not files:
        return []
    declaration = (row.get("extras") or {}).get("attachments") or {}
    allowed = declaration.get("from_event")
    if not allowed:
        raise EventFileError("the event brings attachments and the template version it "
                             "was linked to does not take attachments from the event "
                             "(attachments.from_event)", temporary=False)
    limit = int(declaration.get("max_message_bytes") or DEFAULT_MAX_MESSAGE_BYTES)
    contents = row.get("event_file_contents") or {}
    out: list[Attachment] = []
    total = already
    for index, meta in enumerate(files):
        where = f"the event's attachments[{index}] ({meta['name']})"
        per_file = min(int(allowed["max_file_bytes"]), max(limit - total, 0))
        if meta.get("url") is not None:
            data = fetch(meta["url"], per_file, where)
        else:
            data = base64.b64decode(contents.get(str(index)) or "")
        problem = content_problem(meta["name"], meta["contentType"], data)
        if problem is None and meta["contentType"] not in allowed["types"]:
            problem = f"{meta['contentType']} is not a type the template takes"
        if problem is None and len(data) > per_file:
            problem = (f"{len(data)} bytes, more than the {per_file} bytes left for it "
                       f"(per file {allowed['max_file_bytes']}, per message {limit})")
        if problem is not None:
            raise EventFileError(f"{where}: {problem}", temporary=False)
        total += len(data)
        out.append(Attachment(meta["name"], meta["contentType"], data))
    return out


class UrlFetcher:
    """Fetches URL attachments: only hosts listed in ``MC_ATTACHMENT_ALLOWED_HOSTS``
    (:func:`message_center.net_guard.check_url` with ``public=False``), every connection's
    address checked again after DNS (:func:`message_center.delivery.webpush.guarded_session`,
    the one guarded HTTP client), no redirect followed, the body streamed with a size and a
    time limit."""

    def __init__(self, hosts: HostList | None = None, seconds: float = FETCH_SECONDS) -> None:
        self.hosts = hosts if hosts is not None else HostList.from_env(
            ATTACHMENT_ALLOWED_HOSTS)
        self.seconds = seconds
        self._session: Any = None

    def __call__(self, url: str, max_bytes: int, where: str) -> bytes:
        try:
            check_url(url, self.hosts, public=False, allow_http=True)
        except UrlRefused as exc:
            raise EventFileError(f"{where}: {exc}", temporary=exc.temporary) from None
        if self._session is None:
            self._session = guarded_session(self.hosts)
        deadline = time.monotonic() + self.seconds
        try:
            with self._session.get(url, stream=True,
                                   timeout=(min(5.0, self.seconds), self.seconds)) as response:
                status = response.status_code
                if 300 <= status < 400:
                    raise EventFileError(f"{where}: {url} answered HTTP {status} (a redirect "
                                         f"to {response.headers.get('Location')!r}); "
                                         "redirects are not followed", temporary=False)
                if status >= 400:
                    raise EventFileError(f"{where}: {url} answered HTTP {status}",
                                         temporary=True)
                declared = response.headers.get("Content-Length")
                if declared and declared.isdigit() and int(declared) > max_bytes:
                    raise EventFileError(f"{where}: {url} has {declared} bytes, more than "
                                         f"the {max_bytes} allowed", temporary=False)
                body = bytearray()
                for chunk in response.iter_content(65536):
                    body += chunk
                    if len(body) > max_bytes:
                        raise EventFileError(f"{where}: {url} sent more than the "
                                             f"{max_bytes} bytes allowed", temporary=False)
                    if time.monotonic() > deadline:
                        raise EventFileError(f"{where}: {url} took longer than "
                                             f"{self.seconds:g} s", temporary=True)
                return bytes(body)
        except PeerRefused as exc:
            raise EventFileError(f"{where}: {exc}", temporary=False) from None
        except requests.RequestException as exc:
            raise EventFileError(f"{where}: {url} cannot be fetched: "
                                 f"{type(exc).__name__}", temporary=True) from None

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
