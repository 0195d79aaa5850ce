"""Processing settings: a bad value names the setting; retries back off exponentially."""

from __future__ import annotations

import pytest

from message_center.delivery.ledger import RetryPolicy
from message_center.processing.settings import ProcessingSettings

pytestmark = pytest.mark.fast  # no database, no server: `make test-fast`


@pytest.mark.parametrize(("values", "message"), [
    ({"shards": 0}, "shards: 0 is outside"),
    ({"routing_batch_size": "many"}, "routing_batch_size: 'many' is not a whole number"),
    ({"max_tries": 2.5}, "max_tries: 2.5 is not a whole number"),
    ({"delivery_chunk": True}, "delivery_chunk: True"),
])
def test_bad_settings_name_the_setting(values, message):
    with pytest.raises(ValueError, match=message):
        ProcessingSettings.from_mapping(values)


def test_backoff_doubles_and_is_capped():
    settings = ProcessingSettings(retry_backoff_seconds=10, retry_backoff_max_seconds=35)
    assert [settings.backoff_seconds(n) for n in (1, 2, 3, 4)] == [10, 20, 35, 35]
    assert ProcessingSettings.from_mapping({"retry_backoff_seconds": 7200}) \
        .retry_backoff_max_seconds == 7200


def test_the_retry_policy_is_the_settings_backoff():
    settings = ProcessingSettings(max_tries=3, retry_backoff_seconds=10,
                                  retry_backoff_max_seconds=35)
    assert settings.retry_policy == RetryPolicy(max_tries=3, backoff_base_seconds=10,
                                                backoff_max_seconds=35)
    assert [settings.retry_policy.backoff_seconds(n) for n in (1, 2, 3, 4)] == [10, 20, 35, 35]
