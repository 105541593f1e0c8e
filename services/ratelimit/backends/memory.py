"""In-process fixed-window counters: the embedded default, exact for one replica."""

from __future__ import annotations

from services.common.clock import Clock
from services.ratelimit.backends import WindowResult


class MemoryBackend:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        # bucket -> (window start, used)
        self._windows: dict[str, tuple[int, int]] = {}

    async def hit(self, bucket: str, limit: int, window_seconds: int, cost: int) -> WindowResult:
        now = int(self._clock.now())
        start = now - now % window_seconds
        window_start, used = self._windows.get(bucket, (start, 0))
        if window_start != start:
            used = 0
            if len(self._windows) > 100_000:
                self._expire(start)
        allowed = used + cost <= limit
        if allowed:
            used += cost
        self._windows[bucket] = (start, used)
        return WindowResult(
            allowed=allowed, limit=limit, remaining=max(limit - used, 0), reset_at=start + window_seconds
        )

    def _expire(self, current_start: int) -> None:
        # Drop windows that ended; keeps memory bounded with many keys.
        self._windows = {k: v for k, v in self._windows.items() if v[0] >= current_start}
