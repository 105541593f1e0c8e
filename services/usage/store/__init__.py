"""Ledger storage backends behind one interface."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from interlock.usage.v1 import usage_pb2 as pb


class EventStore(Protocol):
    def insert(self, events: Sequence[pb.UsageEvent]) -> tuple[int, int]:
        """Store events idempotently by request id; returns (stored, duplicates)."""
        ...

    def count(self, request: pb.CountEventsRequest) -> int: ...

    def close(self) -> None: ...
