"""A latest-value broadcaster for watch streams: every watcher sees the
current value at once and every later one, never a stale one twice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Latest(Generic[T]):
    def __init__(self, value: T) -> None:
        self._value = value
        self._version = 1
        self._changed = asyncio.Event()

    @property
    def value(self) -> T:
        return self._value

    @property
    def version(self) -> int:
        return self._version

    def publish(self, value: T) -> None:
        self._value = value
        self._version += 1
        # Wake everyone waiting on the old event, then start a fresh one.
        self._changed.set()
        self._changed = asyncio.Event()

    async def watch(self) -> AsyncIterator[tuple[int, T]]:
        seen = 0
        while True:
            if self._version != seen:
                seen = self._version
                yield seen, self._value
                continue
            await self._changed.wait()
