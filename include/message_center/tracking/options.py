"""What a template opts into: ``tracking: {opens, clicks}``, ``mirror_page``,
``unsubscribe: {category}``. Checked where templates are checked, stored with the
published template (``published_template.options``), read back by the renderer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: The template file fields this module reads.
FIELDS = ("tracking", "mirror_page", "unsubscribe")
TRACKING_KEYS = ("opens", "clicks")
_CATEGORY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
#: Variables a template with these options may use.
MIRROR_VARIABLE, UNSUBSCRIBE_VARIABLE = "mirror_url", "unsubscribe_url"
VARIABLES = (MIRROR_VARIABLE, UNSUBSCRIBE_VARIABLE)


@dataclass(frozen=True)
class TrackingOptions:
    opens: bool = False
    clicks: bool = False
    mirror_page: bool = False
    unsubscribe_category: str | None = None

    @property
    def any(self) -> bool:
        return bool(self.opens or self.clicks or self.mirror_page or self.unsubscribe_category)

    def as_content(self) -> dict[str, Any]:
        """The template content's keys (only those set, so templates without tracking
        keep their content hash)."""
        content: dict[str, Any] = {}
        if self.opens or self.clicks:
            content["tracking"] = {"opens": self.opens, "clicks": self.clicks}
        if self.mirror_page:
            content["mirror_page"] = True
        if self.unsubscribe_category:
            content["unsubscribe"] = {"category": self.unsubscribe_category}
        return content


NONE = TrackingOptions()


def from_content(content: Mapping[str, Any] | None) -> TrackingOptions:
    """Options from stored content (a template version's, or ``published_template.options``)."""
    if not content:
        return NONE
    tracking = content.get("tracking") or {}
    unsubscribe = content.get("unsubscribe") or {}
    return TrackingOptions(opens=bool(tracking.get("opens")), clicks=bool(tracking.get("clicks")),
                           mirror_page=bool(content.get("mirror_page")),
                           unsubscribe_category=unsubscribe.get("category") or None)


def parse(data: Mapping[str, Any]) -> tuple[TrackingOptions, list[tuple[str, str]]]:
    """The options of a template file's fields, with the problems found (field, message)."""
    problems: list[tuple[str, str]] = []
    opens = clicks = mirror = False
    category = None
    if "tracking" in data and data["tracking"] is not None:
        raw = data["tracking"]
        if not isinstance(raw, Mapping):
            problems.append(("tracking", "must be a mapping such as {opens: true, clicks: true}"))
        else:
            for key, value in raw.items():
                if key not in TRACKING_KEYS:
                    problems.append((f"tracking.{key}", "unknown field (allowed: opens, "
                                                        "clicks)"))
                elif not isinstance(value, bool):
                    problems.append((f"tracking.{key}", f"must be true or false, got "
                                                        f"{value!r}"))
            opens, clicks = raw.get("opens") is True, raw.get("clicks") is True
    if "mirror_page" in data and data["mirror_page"] is not None:
        if not isinstance(data["mirror_page"], bool):
            problems.append(("mirror_page", f"must be true or false, got "
                                            f"{data['mirror_page']!r}"))
        else:
            mirror = data["mirror_page"]
    if "unsubscribe" in data and data["unsubscribe"] is not None:
        raw = data["unsubscribe"]
        if not isinstance(raw, Mapping) or "category" not in raw:
            problems.append(("unsubscribe", "must be a mapping with a category, such as "
                                            "{category: newsletter}"))
        else:
            for key in raw:
                if key != "category":
                    problems.append((f"unsubscribe.{key}", "unknown field (allowed: "
                                                           "category)"))
            value = raw["category"]
            if not isinstance(value, str) or not _CATEGORY.match(value):
                problems.append(("unsubscribe.category",
                                 f"{value!r} must be letters, digits, _ . - (at most 64)"))
            else:
                category = value
    return TrackingOptions(opens, clicks, mirror, category), problems
