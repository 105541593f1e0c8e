"""UsageService: records batches of events and answers counts."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from interlock.usage.v1 import usage_pb2 as pb
from interlock.usage.v1 import usage_pb2_grpc
from services.common.errors import InvalidRequestError
from services.usage.store import EventStore

Context = grpc.aio.ServicerContext[Any, Any]


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
