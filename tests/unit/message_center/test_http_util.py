"""The HTTP rules shared by the Web Push channel and the webhook dispatcher."""

from email.utils import formatdate

import pytest

from message_center.http_util import parse_retry_after

pytestmark = pytest.mark.fast  # no database, no server: `make test-fast`


def test_retry_after_in_seconds_or_as_a_date():
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 0 ") == 0.0
    now = 1_800_000_000.0
    assert parse_retry_after(formatdate(now + 90, usegmt=True), now=now) == 90.0
    assert parse_retry_after(formatdate(now - 90, usegmt=True), now=now) == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-5") is None
