"""Latest: watchers get the current value at once, then every published one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from services.common.broadcast import Latest

TIMEOUT = 1.0


async def _next(watch: AsyncIterator[tuple[int, str]]) -> tuple[int, str]:
    return await asyncio.wait_for(anext(watch), TIMEOUT)


async def test_watch_yields_current_then_each_published() -> None:
    latest = Latest("a")
    watch = latest.watch()
    try:
        assert await _next(watch) == (1, "a")
        latest.publish("b")
        assert await _next(watch) == (2, "b")
        latest.publish("c")
        assert await _next(watch) == (3, "c")
        assert latest.value == "c" and latest.version == 3
    finally:
        await watch.aclose()  # type: ignore[attr-defined]


async def test_watch_waits_for_a_change() -> None:
    latest = Latest("a")
    watch = latest.watch()
    try:
        await _next(watch)
        pending = asyncio.ensure_future(anext(watch))
        await asyncio.sleep(0.01)
        assert not pending.done()  # no stale repeat of the current value
        latest.publish("b")
        assert await asyncio.wait_for(pending, TIMEOUT) == (2, "b")
    finally:
        await watch.aclose()  # type: ignore[attr-defined]


async def test_late_watcher_starts_at_the_latest_value() -> None:
    latest = Latest("a")
    latest.publish("b")
    latest.publish("c")
    watch = latest.watch()
    try:
        assert await _next(watch) == (3, "c")
    finally:
        await watch.aclose()  # type: ignore[attr-defined]


async def test_two_watchers_both_see_every_update() -> None:
    latest = Latest("v1")
    queues: list[asyncio.Queue[tuple[int, str]]] = [asyncio.Queue(), asyncio.Queue()]

    async def consume(queue: asyncio.Queue[tuple[int, str]]) -> None:
        async for item in latest.watch():
            queue.put_nowait(item)

    tasks = [asyncio.create_task(consume(q)) for q in queues]
    try:
        for q in queues:
            assert await asyncio.wait_for(q.get(), TIMEOUT) == (1, "v1")
        for version, value in ((2, "v2"), (3, "v3")):
            latest.publish(value)
            for q in queues:
                assert await asyncio.wait_for(q.get(), TIMEOUT) == (version, value)
        await asyncio.sleep(0.01)
        assert all(q.empty() for q in queues)  # nothing delivered twice
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
