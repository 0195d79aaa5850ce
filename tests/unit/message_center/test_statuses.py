"""The sets of statuses (statuses.py) are a partition of the statuses, and the only ones."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from message_center.statuses import (
    ARMABLE_DELIVERY,
    DELIVERY_STARTED,
    ERROR_EVENT,
    FINAL_DELIVERY,
    FINAL_EVENT,
    OPEN_EVENT,
    DeliveryStatus,
    EventStatus,
    sql_in,
)

pytestmark = pytest.mark.fast
INCLUDE = Path(__file__).resolve().parents[3] / "include"


def test_every_event_status_is_either_open_or_final():
    assert set(OPEN_EVENT) | set(FINAL_EVENT) == set(EventStatus)
    assert not set(OPEN_EVENT) & set(FINAL_EVENT)
    assert set(ERROR_EVENT) == set(FINAL_EVENT) - {EventStatus.SENT}


def test_every_ledger_status_is_either_armable_or_started_and_its_final_ones_are_copied():
    assert set(ARMABLE_DELIVERY) | set(DELIVERY_STARTED) == set(DeliveryStatus)
    assert not set(ARMABLE_DELIVERY) & set(DELIVERY_STARTED)
    # updateEventStatus copies a final ledger status onto the event as it is
    assert {EventStatus(s.value) for s in FINAL_DELIVERY} <= set(FINAL_EVENT)


def test_a_set_is_rendered_for_sql_and_nothing_else_is():
    assert sql_in(OPEN_EVENT) == "('pending', 'pending_delivery')"
    assert sql_in(["sent"]) == "('sent')"
    for bad in ([], ["sent'; DROP TABLE rt_event; --"]):
        with pytest.raises(ValueError, match="not a set of statuses"):
            sql_in(bad)


def test_no_module_writes_a_set_of_statuses_of_its_own():
    """A second copy of a set drifts (the final statuses once had three): SQL ``IN`` lists
    and tuple constants of statuses come from statuses.py. Applied migrations are history."""
    names = "|".join(sorted({*EventStatus, *DeliveryStatus}, key=len, reverse=True))
    inline = re.compile(rf"""IN\s*\(\s*'({names})'|=\s*[(\[]\s*["']({names})["']\s*,""")
    found = [f"{path.relative_to(INCLUDE)}:{n}: {line.strip()}"
             for path in sorted(INCLUDE.rglob("*.py"))
             if "migrations" not in path.parts and path.name != "statuses.py"
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if inline.search(line)]
    assert not found, "\n".join(found)
