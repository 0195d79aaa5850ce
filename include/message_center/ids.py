"""64-bit ids whose high byte is the execution instance's cell id, as in ACC.

PostgreSQL stores them as signed ``bigint``; cells 128-255 therefore give negative
stored values. The API shows the unsigned 64-bit number, so ids read the same on every
instance and sort by cell.
"""

from __future__ import annotations

CELL_SHIFT = 56
LOW_MASK = (1 << CELL_SHIFT) - 1
_U64 = 1 << 64

# SQL expression for a new id on an execution database (cell from mc_instance).
NEXT_ID_SQL = (
    "(((SELECT cell_id FROM mc_instance)::bigint << 56) | nextval('mc_id_seq'))"
)


def to_public(stored: int) -> int:
    """Signed stored bigint -> unsigned public id."""
    return stored % _U64


def to_stored(public: int) -> int:
    """Unsigned public id -> signed bigint; refuses what does not fit in 64 bits."""
    if not 0 <= public < _U64:
        raise ValueError(f"id {public} is not an unsigned 64-bit number")
    return public - _U64 if public >= 1 << 63 else public


def cell_of(stored_or_public: int) -> int:
    return (stored_or_public % _U64) >> CELL_SHIFT


def make_id(cell_id: int, sequence: int) -> int:
    """The stored (signed) id for ``sequence`` on cell ``cell_id``."""
    if not 0 <= cell_id <= 255:
        raise ValueError(f"cell id must be 0-255; got {cell_id}")
    if not 0 < sequence <= LOW_MASK:
        raise ValueError(f"sequence must be 1-{LOW_MASK}; got {sequence}")
    return to_stored((cell_id << CELL_SHIFT) | sequence)
