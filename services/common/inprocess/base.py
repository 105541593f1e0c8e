"""What every part of the in-process channel shares: metadata and status shapes, the
details grpc.aio gives in the same cases, and the small helpers for waiting."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, NamedTuple, TypeAlias, cast

import grpc

Pairs: TypeAlias = tuple[tuple[str, str | bytes], ...]
DoneCallback: TypeAlias = Callable[[Any], None]
# What read() returns at a stream's end (missing from grpc's type stubs).
EOF: Any = cast(Any, grpc.aio).EOF

# What grpc.aio says in these cases, so logs and error bodies read the same.
LOCAL_CANCEL_DETAILS = "Locally cancelled by application!"
DEADLINE_DETAILS = "Deadline Exceeded"
NOT_FOUND_DETAILS = "Method not found!"


class Metadatum(NamedTuple):
    """One invocation metadata entry, shaped as grpc.aio's server hands them out."""

    key: str
    value: str | bytes


class Status(NamedTuple):
    code: grpc.StatusCode
    details: str
    trailing: Pairs


# The status of a call the application cancelled.
LOCALLY_CANCELLED = Status(grpc.StatusCode.CANCELLED, LOCAL_CANCEL_DETAILS, ())


def remaining(deadline: float | None, loop: asyncio.AbstractEventLoop) -> float | None:
    """Seconds left before a deadline (none: no deadline), as time_remaining() answers."""
    return None if deadline is None else max(deadline - loop.time(), 0.0)


def wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def wake_all(waiters: list[asyncio.Future[None]]) -> None:
    for waiter in waiters:
        wake(waiter)
    waiters.clear()
