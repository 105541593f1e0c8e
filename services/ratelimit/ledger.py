"""Keeps budget floors in step with the usage ledger, so budget counters that
were lost (a restart of the memory backend, a flushed Redis) rebuild themselves
and a settle that never arrived is still counted."""

from __future__ import annotations

import asyncio
import logging
import math

import grpc

from interlock.usage.v1 import usage_pb2, usage_pb2_grpc
from services.common.clock import Clock
from services.ratelimit.policy import Floors, budget_period
from services.ratelimit.quotas import NANO

log = logging.getLogger(__name__)


class LedgerFloors:
    def __init__(self, channel: grpc.aio.Channel, floors: Floors, clock: Clock, refresh_seconds: float) -> None:
        self._stub: usage_pb2_grpc.UsageServiceAsyncStub = usage_pb2_grpc.UsageServiceStub(channel)
        self._floors = floors
        self._clock = clock
        self._refresh_seconds = refresh_seconds
        self._task: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        period_start = budget_period("monthly", self._clock.now()).start
        spend = await self._stub.GetSpend(usage_pb2.GetSpendRequest(period_start_unix=period_start), timeout=10)
        # Swap whole tables: a check never sees half an update.
        self._floors.keys = {s.id: (_nano(s.total_usd), _nano(s.period_usd)) for s in spend.keys}
        self._floors.projects = {s.id: (_nano(s.total_usd), _nano(s.period_usd)) for s in spend.projects}
        self._floors.period_start = period_start

    async def start(self, wait_seconds: float) -> None:
        """Load the ledger's spend before serving (waiting at most wait_seconds,
        then going on without it), and keep refreshing it."""
        loaded = asyncio.Event()
        self._task = asyncio.create_task(self._run(loaded))
        try:
            await asyncio.wait_for(loaded.wait(), wait_seconds)
        except TimeoutError:
            log.warning("usage ledger not readable yet; budgets count from zero until it is")

    async def _run(self, loaded: asyncio.Event) -> None:
        while True:
            try:
                await self.refresh()
                loaded.set()
                delay = self._refresh_seconds
            except grpc.aio.AioRpcError as exc:
                log.warning("could not read spend from the usage ledger (%s); retrying", exc.code().name)
                delay = min(self._refresh_seconds, 2.0)
            await asyncio.sleep(delay)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def _nano(usd: float) -> int:
    return math.floor(usd * NANO)
