"""Counter backends behind one interface."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class WindowResult:
    allowed: bool
    limit: int
    remaining: int
    # Unix seconds when the window resets.
    reset_at: int


class Backend(Protocol):
    async def hit(self, bucket: str, limit: int, window_seconds: int, cost: int) -> WindowResult:
        """Consume cost from bucket's current window if it fits; report the state."""
        ...
