"""``MC_TRACKING_WORKERS``: how many processes ``mc tracking-server`` runs."""

from __future__ import annotations

import pytest

from mc_local.tracking import workers_from_env


def test_workers_default_to_one_and_bad_values_name_the_setting():
    assert workers_from_env({}) == 1
    assert workers_from_env({"MC_TRACKING_WORKERS": " 4 "}) == 4
    for bad in ("0", "-1", "two", "33"):
        with pytest.raises(ValueError, match="MC_TRACKING_WORKERS must be a whole number"):
            workers_from_env({"MC_TRACKING_WORKERS": bad})
