"""64-bit ids with the cell id in the high byte: stored signed, shown unsigned."""

from __future__ import annotations

import pytest

from message_center.ids import cell_of, make_id, to_public, to_stored

pytestmark = pytest.mark.fast  # no database, no server: `make test-fast`


@pytest.mark.parametrize("cell", [0, 1, 127, 128, 255])
def test_ids_round_trip_and_carry_their_cell(cell):
    stored = make_id(cell, 42)
    assert -(1 << 63) <= stored < 1 << 63  # fits a PostgreSQL bigint
    assert to_stored(to_public(stored)) == stored
    assert cell_of(stored) == cell_of(to_public(stored)) == cell
    assert to_public(stored) >= 0


def test_cells_from_128_are_negative_when_stored_and_sort_last_when_shown():
    assert make_id(128, 1) < 0 < make_id(127, 1)
    assert to_public(make_id(128, 1)) > to_public(make_id(127, 1))


@pytest.mark.parametrize(("call", "message"), [
    (lambda: make_id(256, 1), "cell id must be 0-255"),
    (lambda: make_id(0, 0), "sequence must be"),
    (lambda: to_stored(1 << 64), "is not an unsigned 64-bit number"),
    (lambda: to_stored(-1), "is not an unsigned 64-bit number"),
])
def test_out_of_range_values_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()
