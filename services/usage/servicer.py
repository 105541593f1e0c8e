"""UsageService: records batches of events and answers counts and spend sums."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from interlock.usage.v1 import usage_pb2 as pb
from interlock.usage.v1 import usage_pb2_grpc
from services.common.errors import InvalidRequestError
from services.usage.store import EventStore, SpendTotal

Context = grpc.aio.ServicerContext[Any, Any]
# Event times are int64 milliseconds: a period starting later than that holds nothing.
_MAX_UNIX_MS = 2**63 - 1


class UsageServicer(usage_pb2_grpc.UsageServiceServicer):
    def __init__(self, store: EventStore) -> None:
        self._store = store
        # SQLite allows one writer; serialise here rather than fail on "database is locked".
        self._write_lock = asyncio.Lock()

    async def RecordEvents(self, request: pb.RecordEventsRequest, context: Context) -> pb.RecordEventsResponse:
        for event in request.events:
            if not event.request_id:
                raise InvalidRequestError("every usage event needs a request_id", param="request_id")
        async with self._write_lock:
            stored, duplicates = await asyncio.to_thread(self._store.insert, list(request.events))
        return pb.RecordEventsResponse(stored=stored, duplicates=duplicates)

    async def CountEvents(self, request: pb.CountEventsRequest, context: Context) -> pb.CountEventsResponse:
        return pb.CountEventsResponse(count=await asyncio.to_thread(self._store.count, request))

    async def GetSpend(self, request: pb.GetSpendRequest, context: Context) -> pb.GetSpendResponse:
        if request.period_start_unix < 0:
            raise InvalidRequestError("period_start_unix must not be negative", param="period_start_unix")
        since_ms = min(request.period_start_unix * 1000, _MAX_UNIX_MS)
        totals = await asyncio.to_thread(self._store.spend, since_ms)
        return pb.GetSpendResponse(keys=_to_spend(totals.keys), projects=_to_spend(totals.projects))


def _to_spend(totals: list[SpendTotal]) -> list[pb.Spend]:
    return [pb.Spend(id=t.id, total_usd=t.total_usd, period_usd=t.period_usd) for t in totals]
