"""Waiting in tests without timed asserts: poll a condition at short intervals until it
holds. The timeout only ends a hang (a loaded machine makes nothing fail that would pass);
what the test proves is the condition, never how fast it came true."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(what: str, check: Callable[[], T], timeout: float = 120.0,
               interval: float = 0.05, detail: Callable[[], str] | None = None) -> T:
    """``check()``'s first truthy answer; AssertionError naming ``what`` (and ``detail()``,
    e.g. a log's tail) when none came within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}"
                                 + (f"\n{detail()}" if detail else ""))
        time.sleep(interval)
    return result
