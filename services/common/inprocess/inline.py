"""Work run inline in the task that awaits it, yet cancellable from any task."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from services.common.inprocess.base import wake_all


class Inline:
    """Work run once, inline in the first task that awaits it; later awaiters wait for its
    end. cancel() from any task stops the work where it is: the running task sees
    CancelledError, as with grpc.aio's call.cancel(), without being left cancelling."""

    __slots__ = ("_cancelling", "_task", "_waiters", "_work", "finished")

    def __init__(self, work: Callable[[], Awaitable[None]]) -> None:
        self._work = work
        self._task: asyncio.Task[Any] | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._cancelling = False
        self.finished = False

    async def wait(self) -> None:
        if self.finished:
            return
        if self._task is not None:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter
            return
        task = self._task = asyncio.current_task()
        try:
            await self._work()
        except asyncio.CancelledError:
            if self._cancelling and task is not None:
                self._cancelling = False
                task.uncancel()
            raise
        finally:
            self.finished = True
            wake_all(self._waiters)

    def cancel(self) -> None:
        if self._task is not None and not self.finished and not self._cancelling:
            self._cancelling = True
            self._task.cancel()
