"""The channel interface refuses a channel class that names a provider connection without
saying how to read it, when the class is defined (a deployment would otherwise find out
when its first delivering task asked for the settings)."""

from __future__ import annotations

import pytest

from message_center.channel import Channel

pytestmark = pytest.mark.fast


def test_a_channel_naming_a_connection_must_say_how_to_read_it():
    with pytest.raises(TypeError, match="names the connection 'pager_default'"):
        class Pager(Channel):
            name = "pager"
            connection_id = "pager_default"


def test_a_channel_without_a_connection_is_defined():
    class Pigeon(Channel):
        name = "pigeon"

    assert Pigeon.connection_id is None
