"""The rewriting of a rendered e-mail for tracking: links to tracked links, an open pixel,
the mirror and unsubscribe URLs, the List-Unsubscribe headers.

Pure string work on the rendered HTML (no DOM round trip: the author's markup is sent as
written). A tracked link is the n-th ``<a href="http(s)://...">`` of the HTML that is not
marked ``data-mc-notrack`` and does not point at the tracking server itself (mirror,
unsubscribe); ``mailto:``, ``tel:`` and other schemes are never tracked. The click token
carries the link's number and a hash of its URL: the tracking server renders the message
again (same template version, same ctx) and redirects only to that link's URL.
"""

from __future__ import annotations

import html as htmllib
import re
from dataclasses import dataclass

from message_center.link_marks import MARKED, strip_marks
from message_center.tracking.options import (
    MIRROR_VARIABLE,
    UNSUBSCRIBE_VARIABLE,
    TrackingOptions,
)
from message_center.tracking.tokens import (
    CLICK,
    MIRROR,
    OPEN,
    UNSUBSCRIBE,
    TrackingConfig,
)

_ANCHOR = re.compile(r"<a\b(?P<attrs>[^>]*)>", re.I)
_HREF = re.compile(r"""(?P<lead>\bhref\s*=\s*)"""
                   r"""(?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'|(?P<bare>[^\s"'>]+))""", re.I)
_NOTRACK = re.compile(r"(?:^|\s)data-mc-notrack(?=[\s=/]|$)", re.I)
_BODY_END = re.compile(r"</body\s*>", re.I)
PREVIEW_LOG_ID = 0
#: The pixel: a 1x1 transparent GIF, hidden.
PIXEL_TAG = ('<img src="{url}" width="1" height="1" alt="" '
             'style="display:block;width:1px;height:1px;border:0;" />')


@dataclass(frozen=True)
class TrackedLink:
    number: int
    url: str


def tracked_links(html: str, base_url: str) -> list[TrackedLink]:
    """The links of ``html`` that tracking rewrites, in order (their number is what a
    click token names)."""
    found: list[TrackedLink] = []
    for match in _ANCHOR.finditer(html):
        url = _trackable(match.group("attrs"), base_url)
        if url is not None:
            found.append(TrackedLink(len(found), url))
    return found


def text_links(text: str, base_url: str) -> list[str]:
    """The URLs of the links the author marked ``tracked`` in a text part (rendered with
    its marks), in order; they are numbered after the HTML part's tracked links."""
    return [url for url in (_url(m.group(1), base_url) for m in MARKED.finditer(text))
            if url is not None]


def message_urls(html: str | None, text: str | None, base_url: str) -> list[str]:
    """Every tracked link of a message, by number: the HTML part's, then the text part's
    marked ones (``text`` rendered with its marks)."""
    return ([link.url for link in tracked_links(html or "", base_url)]
            + text_links(text or "", base_url))


def _trackable(attrs: str, base_url: str) -> str | None:
    if _NOTRACK.search(attrs):
        return None
    href = _HREF.search(attrs)
    if href is None:
        return None
    raw = next(v for v in (href.group("dq"), href.group("sq"), href.group("bare"), "")
               if v is not None)
    return _url(htmllib.unescape(raw), base_url)


def _url(raw: str, base_url: str) -> str | None:
    """``raw`` when it is a link tracking may rewrite (an absolute http(s) URL that is not
    the tracking server's own)."""
    url = raw.strip()
    lowered = url.lower()
    if not lowered.startswith(("http://", "https://")):
        return None  # mailto:, tel:, anchors, relative links
    if url.startswith(base_url + "/"):
        return None  # the mirror page and unsubscribe links
    return url


def variables(options: TrackingOptions, config: TrackingConfig | None,
              log_id: int) -> dict[str, str]:
    """``mirror_url`` / ``unsubscribe_url`` for the template, when it opted in."""
    found: dict[str, str] = {}
    if config is None:
        return found
    if options.mirror_page:
        found[MIRROR_VARIABLE] = config.url(MIRROR, log_id)
    if options.unsubscribe_category:
        found[UNSUBSCRIBE_VARIABLE] = config.url(UNSUBSCRIBE, log_id)
    return found


def track_html(html: str, options: TrackingOptions, config: TrackingConfig, log_id: int,
               *, pixel: bool = True) -> str:
    """``html`` with its links rewritten (``tracking.clicks``) and the open pixel added
    before ``</body>`` (``tracking.opens`` and ``pixel``)."""
    if options.clicks:
        counter = [0]

        def rewrite(match: re.Match[str]) -> str:
            attrs = match.group("attrs")
            url = _trackable(attrs, config.base_url)
            if url is None:
                return match.group(0)
            tracked = config.url(CLICK, log_id, counter[0], url)
            counter[0] += 1
            href = _HREF.search(attrs)
            assert href is not None
            new_attrs = (attrs[:href.start()] + f'{href.group("lead")}"{htmllib.escape(tracked)}"'
                         + attrs[href.end():])
            return f"<a{new_attrs}>"

        html = _ANCHOR.sub(rewrite, html)
    if options.opens and pixel:
        tag = PIXEL_TAG.format(url=htmllib.escape(config.url(OPEN, log_id)))
        ends = list(_BODY_END.finditer(html))
        html = (html[:ends[-1].start()] + tag + html[ends[-1].start():]) if ends else html + tag
    return html


def track_text(text: str, options: TrackingOptions, config: TrackingConfig | None,
               log_id: int, *, first: int) -> str:
    """The text part (rendered with its marks) with each marked link rewritten to a tracked
    link numbered from ``first`` (``tracking.clicks``); without tracking, the links as
    written. A marked value that is not an http(s) URL stays as written."""
    if config is None or not options.clicks:
        return strip_marks(text)
    counter = [first]

    def rewrite(match: re.Match[str]) -> str:
        url = _url(match.group(1), config.base_url)
        if url is None:
            return match.group(1)
        tracked = config.url(CLICK, log_id, counter[0], url)
        counter[0] += 1
        return tracked

    return strip_marks(MARKED.sub(rewrite, text))


def headers(options: TrackingOptions, config: TrackingConfig | None,
            log_id: int) -> dict[str, str]:
    """RFC 2369 ``List-Unsubscribe`` and RFC 8058 ``List-Unsubscribe-Post`` for a template
    with an unsubscribe category."""
    if config is None or not options.unsubscribe_category:
        return {}
    return {"List-Unsubscribe": f"<{config.url(UNSUBSCRIBE, log_id)}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
