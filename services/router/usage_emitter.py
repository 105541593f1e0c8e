"""Sends usage events to the usage service in batches, off the request path.

emit() never blocks or fails; a background task flushes by size or time and
keeps events it could not deliver for the next try. Shutdown flushes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

import grpc

from interlock.usage.v1 import usage_pb2 as pb
from interlock.usage.v1 import usage_pb2_grpc

log = logging.getLogger(__name__)


class UsageEmitter:
    def __init__(self, channel: grpc.aio.Channel, batch_size: int, flush_seconds: float) -> None:
        self._stub = usage_pb2_grpc.UsageServiceStub(channel)
        self._batch_size = batch_size
        self._flush_seconds = flush_seconds
        self._pending: deque[pb.UsageEvent] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        return len(self._pending)

    def emit(self, event: pb.UsageEvent) -> None:
        self._pending.append(event)
        if len(self._pending) >= self._batch_size:
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        backoff = self._flush_seconds
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._flush_seconds)
            self._wake.clear()
            if not await self._flush_once():
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            else:
                backoff = self._flush_seconds

    async def _flush_once(self) -> bool:
        while self._pending:
            batch = [self._pending[i] for i in range(min(self._batch_size, len(self._pending)))]
            try:
                await self._stub.RecordEvents(pb.RecordEventsRequest(events=batch), timeout=10)
            except grpc.aio.AioRpcError as exc:
                # Idempotent by request id, so resending after an unknown outcome is safe.
                log.warning("usage service unavailable (%s); %d events pending", exc.code().name, len(self._pending))
                return False
            for _ in batch:
                self._pending.popleft()
        return True

    async def close(self, wait_seconds: float) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._flush_once(), wait_seconds)
        if self._pending:
            log.error("shutting down with %d usage events undelivered", len(self._pending))
