"""Previews: the files a person opens (SMS: the text and its length)."""

from __future__ import annotations

import pytest

from mc_airflow.defaults import TEMPLATES_DIR
from message_center import templates as tpl

pytestmark = pytest.mark.fast  # no database, no server: `make test-fast`


def test_preview_of_an_sms_shows_text_and_length(tmp_path):
    template = tpl.load_templates(TEMPLATES_DIR).find("passwordReset")
    [path] = tpl.write_preview(template, template.seeds[0], tmp_path)
    content = path.read_text()
    assert "Alice, your Demo Shop reset code is 482913." in content
    assert "GSM-7, 1 SMS part(s)" in content


def test_sms_segments():
    assert tpl.sms_segments("a" * 160) == ("GSM-7", 1)
    assert tpl.sms_segments("a" * 161) == ("GSM-7", 2)
    assert tpl.sms_segments("é" * 70) == ("GSM-7", 1)
    assert tpl.sms_segments("✓" * 71) == ("UCS-2", 2)
