"""The marks of links an author asks to have tracked in a text part.

The renderer's ``tracked`` filter (``{{ url | tracked }}``, ``{% filter tracked %}...{%
endfilter %}``) puts a link between these marks; the tracking
(:mod:`message_center.tracking.links`) rewrites the marked links of an e-mail's text part
and every other part loses the marks. Both sides read them from here (the renderer and the
tracking are independent of each other). The marks are Unicode private-use characters: no
template text has them.
"""

from __future__ import annotations

import re
from typing import Any

#: The filter's name in templates.
TRACKED_FILTER = "tracked"
LINK_START, LINK_END = "\ue000", "\ue001"
#: A marked link (its URL: group 1).
MARKED = re.compile(f"{LINK_START}([^{LINK_START}{LINK_END}]*){LINK_END}")


def mark_link(value: Any) -> str:
    """The ``tracked`` filter: the value (a URL) between the marks."""
    url = str(value).replace(LINK_START, "").replace(LINK_END, "").strip()
    return f"{LINK_START}{url}{LINK_END}"


def strip_marks(text: str) -> str:
    """``text`` without link marks (a part or a channel that does not track)."""
    if LINK_START not in text and LINK_END not in text:
        return text
    return text.replace(LINK_START, "").replace(LINK_END, "")
