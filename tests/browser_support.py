"""Browser tests: Debian's Chromium driven by Playwright (its Python package).

Playwright cannot download its own browsers here, so it drives the system Chromium
(``/usr/bin/chromium``, or ``MC_CHROMIUM``) with the flags a closed network needs. On a
machine without it the browser tests are skipped and the test run ends with a loud line
saying how to enable them (``pytest_terminal_summary`` in ``conftest.py``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

CHROMIUM_ENV = "MC_CHROMIUM"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
CHROMIUM_HELP = (
    "The Message Center UI browser tests need Chromium: install it with "
    "`apt-get update && apt-get install -y chromium` (as root; .ci/run does this), or set "
    f"{CHROMIUM_ENV}=/path/to/chromium, then run `make test` again.")
SCREENSHOTS_ENV = "MC_UI_SCREENSHOTS"


def chromium_path() -> str | None:
    """The Chromium binary to drive, or None when there is none on this machine."""
    wanted = os.environ.get(CHROMIUM_ENV)
    candidates = [wanted] if wanted else ["/usr/bin/chromium", "chromium", "chromium-browser"]
    for candidate in candidates:
        found = shutil.which(candidate) if candidate else None
        if found:
            return found
    return None


#: How long a page may take to load, or an element to appear, before a browser test fails.
#: Generous: Airflow's UI loads slowly on a loaded machine (two cores running the suite's
#: Airflow stacks), and a wait returns as soon as the page is there.
PAGE_TIMEOUT_MS = 120_000
EXPECT_TIMEOUT_MS = 60_000


def launch(playwright: Any) -> Any:
    from playwright.sync_api import expect

    path = chromium_path()
    if path is None:
        raise RuntimeError(CHROMIUM_HELP)
    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    return playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)


FRAME = "iframe[title='Message Center']"
"""Airflow shows the Message Center pages in this frame."""


def open_tab(page: Any, label: str) -> Any:
    """Open a Message Center tab and wait until its scripts have run.

    The tab's HTML is there before its script is: a click on a button before then is lost
    (``mc.js`` marks ``<html data-mc-ready>`` on the window's load event).
    """
    ui = page.frame_locator(FRAME)
    ui.locator(".mc-tabs a", has_text=label).click()
    ui.locator("html[data-mc-ready] .mc-tabs a[aria-current='page']", has_text=label).wait_for()
    return ui


def new_context(browser: Any, **options: Any) -> Any:
    """A browser context whose pages wait :data:`PAGE_TIMEOUT_MS` for loads and elements."""
    context = browser.new_context(**options)
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    context.set_default_navigation_timeout(PAGE_TIMEOUT_MS)
    return context


def screenshot_dir() -> Path | None:
    """Where to save screenshots for the README (``MC_UI_SCREENSHOTS``), if anywhere."""
    value = os.environ.get(SCREENSHOTS_ENV)
    if not value:
        return None
    path = Path(value)
    path.mkdir(parents=True, exist_ok=True)
    return path


def login(page: Any, base_url: str, username: str, password: str) -> None:
    """Log in through Airflow's own login form, as a person does."""
    page.goto(f"{base_url}/auth/login?next=/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{base_url}/", timeout=PAGE_TIMEOUT_MS)
