"""The documentation site builds, links only to pages and anchors that exist, and works
offline; the README stays a short entry point.

``mkdocs build --strict`` (configuration in ``mkdocs.yml``: unknown links, missing
anchors and pages left out of the navigation are warnings, and strict makes a warning fail)
runs here, so ``make test`` fails on a broken link. The built pages are then read for
anything the browser would fetch from another host: the site is read on machines without
internet access (and a CDN font would tell a third party who reads it).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from mc_local.localenv import PROJECT_ROOT

DOCS = PROJECT_ROOT / "docs"
README = PROJECT_ROOT / "README.md"
README_MAX_LINES = 300
#: Attributes through which a browser loads something (an ``<a href>`` is only a link).
FETCHED = {"link": ("href",), "script": ("src",), "img": ("src", "srcset"),
           "iframe": ("src",), "source": ("src", "srcset"), "video": ("src", "poster"),
           "audio": ("src",), "embed": ("src",), "object": ("data",),
           "image": ("href", "xlink:href"), "use": ("href", "xlink:href")}
REMOTE = re.compile(r"^\s*(https?:)?//", re.I)
CSS_REMOTE = re.compile(
    r"""url\(\s*['"]?\s*(https?:)?//|@import\s+['"]?(url\()?\s*['"]?(https?:)?//""", re.I)


class _Fetches(HTMLParser):
    """Collects the URLs a page makes the browser fetch, and its inline styles."""

    def __init__(self) -> None:
        super().__init__()
        self.remote: list[str] = []
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value and name in FETCHED.get(tag, ()) and any(
                    REMOTE.match(part) for part in value.split(",")):
                self.remote.append(f"<{tag} {name}={value!r}>")
            if name == "style" and value:
                self.styles.append(value)
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.styles.append(data)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's notice, not a warning
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
         str(PROJECT_ROOT / "mkdocs.yml"), "--site-dir", str(out)],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (
        f"mkdocs build --strict failed ({result.returncode}): a broken link or anchor, a page "
        f"missing from the nav in mkdocs.yml, or a bad snippet:\n{result.stdout[-4000:]}\n"
        f"{result.stderr[-4000:]}")
    return out


@pytest.mark.fast
def test_the_site_builds_strictly_with_every_page(site):
    pages = {path.relative_to(DOCS).with_suffix(".html").as_posix()
             for path in DOCS.rglob("*.md")}
    built = {path.relative_to(site).as_posix() for path in site.rglob("*.html")}
    assert pages <= built, f"pages not built: {sorted(pages - built)}"
    index = (site / "index.html").read_text(encoding="utf-8")
    # The home page shows the README's first steps (snippets), not a copy of them.
    assert "PASSWORD_RESET" in index and "make test-fast" in index
    assert "--8&lt;--" not in index and "--8<--" not in index


@pytest.mark.fast
def test_no_built_page_loads_anything_from_another_host(site):
    found: list[str] = []
    for page in sorted(site.rglob("*.html")):
        parser = _Fetches()
        parser.feed(page.read_text(encoding="utf-8"))
        found += [f"{page.relative_to(site)}: {item}" for item in parser.remote]
        found += [f"{page.relative_to(site)}: style {style[:80]!r}"
                  for style in parser.styles if CSS_REMOTE.search(style)]
    for sheet in sorted(site.rglob("*.css")):
        found += [f"{sheet.relative_to(site)}: {match.group(0)}"
                  for match in CSS_REMOTE.finditer(sheet.read_text(encoding="utf-8"))]
    for picture in sorted(DOCS.rglob("*.svg")):
        text = picture.read_text(encoding="utf-8")
        found += [f"{picture.relative_to(DOCS)}: {match.group(0)}" for match in re.finditer(
            r"""(xlink:)?href\s*=\s*["']\s*(https?:)?//[^"']*""", text)]
        found += [f"{picture.relative_to(DOCS)}: {match.group(0)}"
                  for match in CSS_REMOTE.finditer(text)]
    assert found == [], "fetched from another host:\n" + "\n".join(found)


@pytest.mark.fast
def test_no_page_needs_a_script_from_a_cdn():
    """Material renders a ``mermaid`` block with a script it loads from a CDN, and maths with
    MathJax from one: pictures are SVG or PNG files beside the pages instead."""
    for page in sorted(DOCS.rglob("*.md")):
        text = page.read_text(encoding="utf-8")
        assert "```mermaid" not in text, f"{page.relative_to(PROJECT_ROOT)}: a mermaid block"


@pytest.mark.fast
def test_the_readme_is_a_short_entry_point():
    text = README.read_text(encoding="utf-8")
    lines = text.count("\n")
    assert lines < README_MAX_LINES, (
        f"README.md has {lines} lines; keep it under {README_MAX_LINES}: move the detail to "
        "a page under docs/ and link it")
    assert "make run" in text and "make test" in text
    assert "<!-- readme-test: watch" in text, "the README's first event (a tested block)"
    assert "docs/screenshots/" in text
    for target in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (PROJECT_ROOT / target).exists(), f"README.md links to a missing {target}"
