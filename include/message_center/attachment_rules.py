"""What a file must be to go out attached to an e-mail, wherever it comes from: a template
(static or generated, :mod:`message_center.channels.email_attachments`) or the event
(``attachments`` of a pushed event, :mod:`message_center.events`).

One set of rules for both, so that an event cannot attach what a template may not:

* content types from an allow-list (:data:`ALLOWED_TYPES`); executables and scripts are
  refused by file-name extension, by type and by content;
* the declared type is checked against the content: the binary types by their magic
  bytes (the ``filetype`` library, which also recognises executables and archives), text
  types must be UTF-8;
* sizes: per file, per message, a count.

The template key ``attachments: {from_event: ...}`` (:func:`parse_from_event`) says
whether events may bring files and within which limits.
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import filetype

DEFAULT_MAX_MESSAGE_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_FILE_BYTES = 10 * 1024 * 1024
MAX_FILES = 10
MAX_NAME_CHARS = 200
MAX_URL_CHARS = 2048
#: Content types an attachment may have. Anything else (executables, scripts, HTML,
#: archives of unknown content) is refused.
ALLOWED_TYPES = ("application/pdf", "text/calendar", "text/plain", "text/csv",
                 "image/png", "image/jpeg", "image/gif")
#: File-name extensions refused whatever the declared type (executables and scripts).
REFUSED_EXTENSIONS = frozenset((
    ".exe", ".com", ".bat", ".cmd", ".scr", ".pif", ".msi", ".dll", ".cpl", ".jar", ".js",
    ".jse", ".vbs", ".vbe", ".wsf", ".wsh", ".ps1", ".sh", ".bash", ".py", ".pl", ".php",
    ".rb", ".hta", ".lnk", ".reg", ".app", ".apk", ".deb", ".rpm", ".html", ".htm", ".svg"))
#: First bytes ``filetype`` does not know: Mach-O binaries, Java classes / universal
#: binaries, and scripts (a shebang line says what they are).
_SCRIPT_MAGIC = (b"\xcf\xfa\xed\xfe", b"\xce\xfa\xed\xfe", b"\xca\xfe\xba\xbe", b"#!")
_BINARY_TYPES = ("application/pdf", "image/png", "image/jpeg", "image/gif")
_TEXT_TYPES = ("text/plain", "text/csv", "text/calendar")
_BAD_NAME = re.compile(r"[\x00-\x1f\x7f/\\]")


def content_problem(name: str, content_type: str, data: bytes) -> str | None:
    """Why a file may not be attached (None: it may): type not allowed, executable name or
    content, or content that is not what the declared type says."""
    suffix = Path(name).suffix.lower()
    if suffix in REFUSED_EXTENSIONS:
        return f"{name!r}: files named *{suffix} are refused (executables and scripts)"
    if content_type not in ALLOWED_TYPES:
        return (f"{name!r}: content type {content_type!r} is not allowed "
                f"(allowed: {', '.join(ALLOWED_TYPES)})")
    guessed = filetype.guess_mime(data[:8192])
    if data.startswith(_SCRIPT_MAGIC) or (guessed is not None and guessed not in ALLOWED_TYPES
                                          and content_type not in _TEXT_TYPES):
        return f"{name!r}: the content is an executable or a script (or an archive); refused"
    if content_type in _BINARY_TYPES and guessed != content_type:
        return f"{name!r}: the content is not {content_type} (declared type checked)"
    if content_type in _TEXT_TYPES:
        if guessed is not None and guessed not in _TEXT_TYPES:
            return f"{name!r}: the content is {guessed}, not {content_type}"
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return f"{name!r}: the content is not UTF-8 text ({content_type})"
    return None


def guess_type(name: str) -> str | None:
    """The content type a file name suggests (None: cannot tell)."""
    return {".ics": "text/calendar", ".csv": "text/csv"}.get(
        Path(name).suffix.lower()) or mimetypes.guess_type(name)[0]


def file_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name an attached file: empty, a path, control characters, too
    long (None: it can)."""
    if (not name.strip() or _BAD_NAME.search(name) or name.strip() in (".", "..")
            or len(name) > MAX_NAME_CHARS):
        return (f"{name!r} is not a file name (no path, no control characters, at most "
                f"{MAX_NAME_CHARS} characters)")
    return None


def decode_content(content: str) -> bytes | None:
    """Base64 text (line breaks and blanks allowed, as SOAP and MIME write it) as bytes,
    None when it is not base64."""
    try:
        return base64.b64decode("".join(content.split()), validate=True)
    except (binascii.Error, ValueError):
        return None


# --- the template's from_event ----------------------------------------------------------
FROM_EVENT_FIELDS = ("max_files", "max_file_bytes", "types", "urls")


def parse_from_event(raw: Any) -> tuple[dict[str, Any] | None, list[tuple[str, str]]]:
    """``attachments.from_event`` of a template: ``true`` (the defaults) or a mapping of
    :data:`FROM_EVENT_FIELDS`. Returns what is stored with the version (every limit
    spelled out) and the problems as ``(field, message)``."""
    where = "attachments.from_event"
    if raw is True:
        raw = {}
    if not isinstance(raw, Mapping):
        return None, [(where, "must be true or a mapping with "
                              f"{', '.join(FROM_EVENT_FIELDS)}")]
    problems: list[tuple[str, str]] = []
    for key in sorted(set(raw) - set(FROM_EVENT_FIELDS), key=str):
        problems.append((f"{where}.{key}",
                         f"unknown field (allowed: {', '.join(FROM_EVENT_FIELDS)})"))

    def number(key: str, default: int, top: int) -> int:
        value = raw.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= top:
            problems.append((f"{where}.{key}", f"must be a number from 1 to {top}"))
            return default
        return value

    declared = {"max_files": number("max_files", MAX_FILES, MAX_FILES),
                "max_file_bytes": number("max_file_bytes", DEFAULT_MAX_FILE_BYTES,
                                         DEFAULT_MAX_FILE_BYTES)}
    types = raw.get("types", list(ALLOWED_TYPES))
    if not isinstance(types, list) or not types or any(t not in ALLOWED_TYPES for t in types):
        problems.append((f"{where}.types", "must be a list of content types from "
                                           f"{', '.join(ALLOWED_TYPES)}"))
        types = list(ALLOWED_TYPES)
    urls = raw.get("urls", True)
    if not isinstance(urls, bool):
        problems.append((f"{where}.urls", "must be true or false"))
        urls = True
    declared.update(types=list(types), urls=urls)
    return (None, problems) if problems else (declared, [])


def event_file_problem(index: int, item: Mapping[str, Any], allowed: Mapping[str, Any],
                       max_message_bytes: int) -> tuple[str, str] | None:
    """The first reason (``field``, message) an event's attachment ``item`` (its stored
    metadata: ``name``, ``contentType``, ``size`` or ``url``) does not fit the template's
    ``from_event`` limits; ``field`` is the wire name (``attachments[1].content``)."""
    where = f"attachments[{index}]"
    if index >= allowed["max_files"]:
        return where, f"the template takes at most {allowed['max_files']} attachments " \
                      "from the event"
    if item.get("url") is not None and not allowed["urls"]:
        return f"{where}.url", "the template does not take attachments by URL; send content"
    if item["contentType"] not in allowed["types"]:
        return f"{where}.contentType", (f"{item['contentType']} is not a type the template "
                                        f"takes ({', '.join(allowed['types'])})")
    size = item.get("size")
    if size is not None and size > min(allowed["max_file_bytes"], max_message_bytes):
        return f"{where}.content", (f"{size} bytes, more than the "
                                    f"{min(allowed['max_file_bytes'], max_message_bytes)} "
                                    "bytes the template allows per file")
    return None


def content_disposition(name: str) -> str:
    """``Content-Disposition`` of a download of ``name`` (RFC 6266: an ASCII fallback and
    the UTF-8 name), so a name can never break out of the header."""
    from urllib.parse import quote

    fallback = "".join(ch if 32 <= ord(ch) < 127 and ch not in '"\\;' else "_"
                       for ch in name) or "file"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"
