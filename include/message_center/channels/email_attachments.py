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
import mimetypes
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from message_center.rendering import RenderError, check_syntax, render_part

DEFAULT_MAX_MESSAGE_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_FILE_BYTES = 10 * 1024 * 1024
MAX_FILES = 10
MAX_NAME_CHARS = 200
#: Content types an attachment may have. Anything else (executables, scripts, HTML,
#: archives of unknown content) is refused.
ALLOWED_TYPES = ("application/pdf", "text/calendar", "text/plain", "text/csv",
                 "image/png", "image/jpeg", "image/gif")
#: File-name extensions refused whatever the declared type (executables and scripts).
REFUSED_EXTENSIONS = frozenset((
    ".exe", ".com", ".bat", ".cmd", ".scr", ".pif", ".msi", ".dll", ".cpl", ".jar", ".js",
    ".jse", ".vbs", ".vbe", ".wsf", ".wsh", ".ps1", ".sh", ".bash", ".py", ".pl", ".php",
    ".rb", ".hta", ".lnk", ".reg", ".app", ".apk", ".deb", ".rpm", ".html", ".htm", ".svg"))
#: First bytes of executables and scripts (PE, ELF, Mach-O, Java class, shebang).
_EXECUTABLE_MAGIC = (b"MZ", b"\x7fELF", b"\xcf\xfa\xed\xfe", b"\xce\xfa\xed\xfe",
                     b"\xca\xfe\xba\xbe", b"#!")
#: What the content of a binary type starts with.
_MAGIC = {"application/pdf": (b"%PDF-",), "image/png": (b"\x89PNG\r\n\x1a\n",),
          "image/jpeg": (b"\xff\xd8\xff",), "image/gif": (b"GIF87a", b"GIF89a")}
_TEXT_TYPES = ("text/plain", "text/csv", "text/calendar")
_BAD_NAME = re.compile(r"[\x00-\x1f\x7f/\\]")
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


def content_problem(name: str, content_type: str, data: bytes) -> str | None:
    """Why a file may not be attached (None: it may): type not allowed, executable name or
    content, or content that is not what the declared type says."""
    suffix = Path(name).suffix.lower()
    if suffix in REFUSED_EXTENSIONS:
        return f"{name!r}: files named *{suffix} are refused (executables and scripts)"
    if content_type not in ALLOWED_TYPES:
        return (f"{name!r}: content type {content_type!r} is not allowed "
                f"(allowed: {', '.join(ALLOWED_TYPES)})")
    if data.startswith(_EXECUTABLE_MAGIC):
        return f"{name!r}: the content is an executable or a script; refused"
    starts = _MAGIC.get(content_type)
    if starts is not None and not data.startswith(starts):
        return f"{name!r}: the content is not {content_type} (declared type checked)"
    if content_type in _TEXT_TYPES:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return f"{name!r}: the content is not UTF-8 text ({content_type})"
    return None


def _guess_type(name: str) -> str | None:
    return {".ics": "text/calendar", ".csv": "text/csv"}.get(
        Path(name).suffix.lower()) or mimetypes.guess_type(name)[0]


# --- the template's declaration ---------------------------------------------------------
Problems = list[tuple[str, str]]


def parse_declaration(raw: Any, base_dir: Path) -> tuple[dict[str, Any] | None, Problems]:
    """The template's ``attachments:`` as stored with the version (static files read from
    ``base_dir`` and kept as base64 with their hash), and the problems found as
    ``(field, message)``. ``raw``: a list of items, or ``{max_message_bytes, files}``."""
    problems: Problems = []
    limit = DEFAULT_MAX_MESSAGE_BYTES
    items = raw
    if isinstance(raw, Mapping):
        unknown = set(raw) - {"files", "max_message_bytes"}
        for key in sorted(unknown, key=str):
            problems.append((f"attachments.{key}",
                             "unknown field (allowed: files, max_message_bytes)"))
        limit = raw.get("max_message_bytes", limit)
        if not isinstance(limit, int) or isinstance(limit, bool) or not (
                0 < limit <= DEFAULT_MAX_MESSAGE_BYTES * 5):
            problems.append(("attachments.max_message_bytes",
                             f"must be a number of bytes from 1 to "
                             f"{DEFAULT_MAX_MESSAGE_BYTES * 5}"))
            limit = DEFAULT_MAX_MESSAGE_BYTES
        items = raw.get("files")
    if not isinstance(items, list) or not items:
        problems.append(("attachments", "must be a list of attachments, each with one of "
                         f"{', '.join(KINDS)} (or a mapping with files and "
                         "max_message_bytes)"))
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
    return {"files": files, "max_message_bytes": limit}, []


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
    if not name or _BAD_NAME.search(name) or name in (".", "..") or len(name) > MAX_NAME_CHARS:
        raise RenderError(f"{where}.name: {name!r} is not a file name (no path, no control "
                          f"characters, at most {MAX_NAME_CHARS} characters)")
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
