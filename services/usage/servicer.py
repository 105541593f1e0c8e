"""UsageService: records batches of events and answers counts, spend sums and usage
reports; ModelStatsService: seed 002's model stats."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from google.api import httpbody_pb2  # type: ignore[attr-defined]  # mypy_path's vendored protos/google/api hides it

from interlock.usage.v1 import usage_pb2 as pb
from interlock.usage.v1 import usage_pb2_grpc
from services.common.clock import Clock, SystemClock
from services.common.errors import InvalidRequestError
from services.common.rpc import HTTP_CODE_KEY
from services.usage.callers import CallerResolver
from services.usage.feedback import Feedback
from services.usage.reports import Reports
from services.usage.store import EventStore, SpendTotal

Context = grpc.aio.ServicerContext[Any, Any]
# Event times are int64 milliseconds: a period starting later than that holds nothing.
_MAX_UNIX_MS = 2**63 - 1


class UsageServicer(usage_pb2_grpc.UsageServiceServicer):
    def __init__(
        self, store: EventStore, callers: CallerResolver, reports: Reports, *, clock: Clock | None = None
    ) -> None:
        self._store = store
        self._callers = callers
        self._reports = reports
        # SQLite allows one writer; serialise here rather than fail on "database is locked".
        self._write_lock = asyncio.Lock()
        self._feedback = Feedback(store, clock or SystemClock(), self._store_scores)

    async def RecordEvents(self, request: pb.RecordEventsRequest, context: Context) -> pb.RecordEventsResponse:
        for event in request.events:
            if not event.request_id:
                raise InvalidRequestError("every usage event needs a request_id", param="request_id")
        async with self._write_lock:
            stored, duplicates = await asyncio.to_thread(self._store.insert, list(request.events))
        return pb.RecordEventsResponse(stored=stored, duplicates=duplicates)

    async def RecordScores(self, request: pb.RecordScoresRequest, context: Context) -> pb.RecordScoresResponse:
        for score in request.scores:
            if not score.request_id or not score.evaluator:
                raise InvalidRequestError("every score needs a request_id and an evaluator", param="scores")
            if not 0.0 <= score.score <= 1.0:
                raise InvalidRequestError(f"score {score.score} of {score.request_id} is outside 0..1", param="score")
        return pb.RecordScoresResponse(stored=await self._store_scores(list(request.scores)))

    async def RecordFeedback(self, request: pb.RecordFeedbackRequest, context: Context) -> pb.RecordFeedbackResponse:
        caller = self._callers.resolve(context.invocation_metadata() or ())
        return await self._feedback.record(caller, request)

    async def _store_scores(self, scores: list[pb.QualityScore]) -> int:
        async with self._write_lock:
            return await asyncio.to_thread(self._store.insert_scores, scores)

    async def CountEvents(self, request: pb.CountEventsRequest, context: Context) -> pb.CountEventsResponse:
        return pb.CountEventsResponse(count=await asyncio.to_thread(self._store.count, request))

    async def GetSpend(self, request: pb.GetSpendRequest, context: Context) -> pb.GetSpendResponse:
        if request.period_start_unix < 0:
            raise InvalidRequestError("period_start_unix must not be negative", param="period_start_unix")
        since_ms = min(request.period_start_unix * 1000, _MAX_UNIX_MS)
        totals = await asyncio.to_thread(self._store.spend, since_ms)
        return pb.GetSpendResponse(keys=_to_spend(totals.keys), projects=_to_spend(totals.projects))

    async def QueryUsage(self, request: pb.QueryUsageRequest, context: Context) -> pb.QueryUsageResponse:
        caller = self._callers.resolve(context.invocation_metadata() or ())
        return await self._reports.query_usage(caller, request)

    async def ExportUsage(self, request: pb.QueryUsageRequest, context: Context) -> Any:
        caller = self._callers.resolve(context.invocation_metadata() or ())
        response = await self._reports.query_usage(caller, request)
        return httpbody_pb2.HttpBody(content_type="text/csv; charset=utf-8", data=Reports.to_csv(response))


class ModelStatsServicer(usage_pb2_grpc.ModelStatsServiceServicer):
    def __init__(self, callers: CallerResolver, reports: Reports) -> None:
        self._callers = callers
        self._reports = reports

    async def GetModelStats(self, request: pb.GetModelStatsRequest, context: Context) -> pb.GetModelStatsResponse:
        caller = self._callers.resolve(context.invocation_metadata() or ())
        response = await self._reports.model_stats(caller, request)
        # Seed 002 answers 201 Created, with [] as well as with results.
        await context.send_initial_metadata(((HTTP_CODE_KEY, "201"),))
        return response


def _to_spend(totals: list[SpendTotal]) -> list[pb.Spend]:
    return [pb.Spend(id=t.id, total_usd=t.total_usd, period_usd=t.period_usd) for t in totals]
