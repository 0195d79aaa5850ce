"""A shard's claim on queued events: what a delivery task needs to find its events again.

Claiming writes a random ``token`` and a ``shard`` number onto the event rows (see
:mod:`message_center.processing.queue`); the ledger (:mod:`message_center.delivery.ledger`)
and the processing loops then address "the events of this shard" by that pair. Only
this small value travels between Airflow tasks (XCom), never the events themselves.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from message_center.statuses import event_table


def new_token() -> int:
    """A random positive 63-bit claim token (fits a signed bigint)."""
    return secrets.randbits(62) + 1


@dataclass(frozen=True)
class ShardClaim:
    """What a shard task needs to find its events again: small enough for XCom."""

    kind: str
    token: int
    shard: int
    events: int = 0

    def __post_init__(self) -> None:
        event_table(self.kind)  # validates the kind
        if self.shard < 0:
            raise ValueError(f"shard must be >= 0; got {self.shard}")

    def to_xcom(self) -> dict[str, Any]:
        # The token is sent as a string: XCom JSON round-trips are safe for any size.
        return {"kind": self.kind, "token": str(self.token), "shard": self.shard,
                "events": self.events}

    @classmethod
    def from_xcom(cls, value: dict[str, Any]) -> ShardClaim:
        return cls(kind=str(value["kind"]), token=int(value["token"]),
                   shard=int(value["shard"]), events=int(value.get("events", 0)))
