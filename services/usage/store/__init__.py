"""Ledger storage backends behind one interface."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

from interlock.usage.v1 import usage_pb2 as pb


class SpendTotal(NamedTuple):
    """What one key or project spent, in USD: in all, and since the period start."""

    id: str
    total_usd: float
    period_usd: float


class SpendTotals(NamedTuple):
    keys: list[SpendTotal]
    projects: list[SpendTotal]


class EventStore(Protocol):
    def insert(self, events: Sequence[pb.UsageEvent]) -> tuple[int, int]:
        """Store events idempotently by request id; returns (stored, duplicates)."""
        ...

    def count(self, request: pb.CountEventsRequest) -> int: ...

    def spend(self, period_start_unix_ms: int) -> SpendTotals:
        """Sum cost_usd per key and per project (anonymous ones left out), in all and from the period start on."""
        ...

    def close(self) -> None: ...
